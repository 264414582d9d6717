"""The web app in a real browser (Debian's Chromium driven by Playwright) against the embedded
stack with tiny models: a user signs in with an API key and goes through each page's main
journey to its end, as they would by hand. A screenshot of each finished page is written to
test-artifacts/web/ (README, "Web app").

Run on the embedded broker's stack only: the page talks to the HTTP API, which is the same
on either broker."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import threading
from pathlib import Path

import pytest
from PIL import Image

from tests import faces
from tests.forms import multipart
from tests.streams.api.test_web_api_e2e import upload, wait_for_end
from tests.test_avatars_e2e import jpeg

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(os.environ.get("RESTYLE_TEST_ARTIFACTS",
                                Path(__file__).parent.parent / "test-artifacts")) / "web"
TENANT, OTHER_TENANT = "web-ui", "web-other"
PHOTO_WITH_LABELS = 4  # of tests/data's room photos: the tiny detector finds labels in it
# The tiny models are built from a fixed seed: a makeover of room photo 1 rendered with this
# seed shows objects the sample catalog matches (5 of them here).
SEED_WITH_PRODUCTS = 4
# Long enough for a tiny render or training on two busy cores.
JOB_S = 240


@pytest.fixture()
def browser(e2e):
    """Chromium, for one test: Playwright's synchronous API runs an event loop in this thread
    while it is open, which nothing else in the session (asyncio.run) may then do."""
    from playwright.sync_api import sync_playwright

    if e2e.broker != "tansu":
        pytest.skip("the web app runs once, on the embedded stack")
    assert Path(CHROMIUM).exists(), "install Debian's chromium (./install.sh test does)"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def web(e2e, browser):
    """A fresh browser tab on the app, nothing signed in."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    # What the page itself reported, printed with a failing test's output.
    page.on("console", lambda message: print(f"[browser {message.type}] {message.text}"))
    page.on("pageerror", lambda error: print(f"[browser error] {error}"))
    page.goto(e2e.status_url + "/")
    yield page
    context.close()


def sign_in(page, key: str) -> None:
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("navigation", name="Pipelines").wait_for()


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def jpeg_file(folder: Path, name: str, image: Image.Image) -> Path:
    path = folder / name
    image.convert("RGB").save(path, format="JPEG", quality=92)
    return path


def loaded(page, image) -> None:
    """Wait until the <img> has been drawn from a real picture."""
    page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                           arg=image.element_handle())


def drop_image(page, target, photo: Path) -> None:
    """Drag a photo from the desktop and drop it on target, as a browser delivers it."""
    dropped = page.evaluate_handle(
        """([data, name]) => {
             const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
             const files = new DataTransfer();
             files.items.add(new File([bytes], name, { type: "image/jpeg" }));
             return files;
           }""", [base64.b64encode(photo.read_bytes()).decode(), photo.name])
    target.dispatch_event("dragover", {"dataTransfer": dropped})
    target.dispatch_event("drop", {"dataTransfer": dropped})


def finished(page, selector: str, timeout_s: float = JOB_S) -> str:
    """Wait for the element's data-status to be an end, and return it."""
    page.wait_for_function(
        """selector => ["done", "failed", "cancelled", "succeeded"].includes(
               document.querySelector(selector)?.dataset.status)""",
        arg=selector, timeout=timeout_s * 1000)
    return page.locator(selector).get_attribute("data-status")


def test_a_wrong_key_is_refused_and_the_right_one_opens_the_app(e2e, web):
    web.get_by_label("API key").fill("rsk_000000000000_" + "x" * 43)
    web.get_by_role("button", name="Sign in").click()
    assert "refused" in web.get_by_role("alert").first.inner_text()
    assert web.get_by_role("navigation", name="Pipelines").is_hidden()

    sign_in(web, e2e.key_for(TENANT))
    assert web.locator("#tenant-name").inner_text() == f"Tenant {TENANT}"
    # The key is kept for the tab: a reload stays signed in.
    web.reload()
    web.get_by_role("navigation", name="Pipelines").wait_for()
    web.get_by_role("button", name="Sign out").click()
    web.get_by_label("API key").wait_for()


def test_a_page_left_while_it_loads_leaves_nothing_behind(e2e, web):
    """Pages that wait for the API before drawing (the makeover asks for its styles) used to
    finish into the page the user had moved on to: two forms, two "Room photo" fields."""
    sign_in(web, e2e.key_for(TENANT))
    # Two visits begun in one moment: both ask for the styles before either is answered.
    web.evaluate("() => { location.hash = '#/makeover/a'; location.hash = '#/makeover/b'; }")
    web.get_by_label("Room photo").wait_for()
    web.wait_for_load_state("networkidle")
    assert web.get_by_label("Room photo").count() == 1
    assert web.locator("#page h2").all_inner_texts() == ["Room makeover"]


def test_a_room_makeover_is_followed_live_to_a_result_with_its_products(e2e, web,
                                                                         room_photos):
    sign_in(web, e2e.key_for(TENANT))
    web.get_by_role("link", name="Room makeover").click()
    web.get_by_label("Room photo").set_input_files(str(room_photos[1]))
    web.get_by_label("Style").select_option("scandinavian")
    assert "scandinavian interior" in web.locator(".style-description").inner_text()
    web.get_by_text("More settings").click()
    web.get_by_label("Seed").fill(str(SEED_WITH_PRODUCTS))
    web.get_by_role("button", name="Restyle the room").click()

    assert finished(web, ".job") == "done"
    job_id = web.locator(".job").get_attribute("data-job")
    # A preview arrived while it rendered (every step but the last here).
    assert web.locator(".job img.preview").get_attribute("src").startswith(
        "data:image/jpeg;base64,")
    result = web.get_by_role("region", name="Result")
    result.wait_for()
    restyled = result.get_by_role("img", name="The restyled room")
    loaded(web, restyled)
    status, job = e2e.get(f"/jobs/{job_id}", tenant=TENANT)
    products = job["result"]["products"]
    assert products  # the render of this seed shows objects the catalog matches
    # Each product the result was matched with is drawn over it and listed with its match.
    assert result.locator(".box").count() == len(products)
    # The photo is shown in the render's frame (stretched as the render's depth map was), so
    # the slider compares the same room, and each box sits where its product is in the render.
    before = result.get_by_role("img", name="The room before").bounding_box()
    after = restyled.bounding_box()
    assert (before["width"], before["height"]) == (after["width"], after["height"])
    natural = restyled.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    scale = after["width"] / natural[0], after["height"] / natural[1]
    for n, product in enumerate(products):
        drawn = result.locator(".box").nth(n).bounding_box()
        assert abs(drawn["x"] - (after["x"] + product["box"]["x0"] * scale[0])) < 2
        assert abs(drawn["y"] - (after["y"] + product["box"]["y0"] * scale[1])) < 2
    listed = result.get_by_role("list", name="Products in the result").locator("li")
    assert listed.count() == len(products)
    for n, product in enumerate(products):
        assert product["caption"] in listed.nth(n).inner_text()
        loaded(web, listed.nth(n).get_by_role("img"))  # its catalog picture, to shop it
    # The before/after slider moves the divide, from the keyboard too.
    slider = result.get_by_role("slider")
    slider.focus()
    web.keyboard.press("End")
    assert "inset(0px 0px 0px 100%)" in result.locator(".after").get_attribute("style")
    slider.fill("50")  # half before, half after, for the screenshot
    assert result.get_by_role("link", name=re.compile("Download")).get_attribute(
        "href").startswith("blob:")
    screenshot(web, "makeover")


def test_a_background_batch_shows_each_image_and_the_bad_one_failed_with_its_cause(
        e2e, web, room_photos, tmp_path):
    # In this photo the tiny detector finds a person and a shoe (its weights are seeded).
    photo = room_photos[PHOTO_WITH_LABELS]
    sign_in(web, e2e.key_for(TENANT))
    web.get_by_role("link", name="Background").click()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a picture")
    web.get_by_label("Photos").set_input_files([str(photo), str(broken)])
    # Labels are detected per photo; the unreadable one says so at once.
    bad_row = web.locator(".photo-row[data-name='broken.jpg']")
    assert bad_row.locator(".error").inner_text().startswith(
        "Cannot read this photo: broken.jpg is not an image format restyle reads")
    # The browser cannot draw it either: a "no preview" box, not a broken image.
    assert bad_row.get_by_role("img", name="broken.jpg: no preview").count() == 1
    good_row = web.locator(f".photo-row[data-name='{photo.name}']")
    chips = good_row.get_by_role("group", name=f"Keep in {photo.name}").locator(".chip")
    chips.first.wait_for()
    assert sorted(chips.evaluate_all("all => all.map(c => c.dataset.label)")) == [
        "person", "shoe"]
    # Dropping a chip takes its label out of what the mask keeps.
    person = good_row.locator(".chip[data-label='person']")
    person.click()
    assert person.get_attribute("aria-pressed") == "false"
    web.get_by_label("New background").fill("a sunlit beach")
    web.get_by_label("Mode").select_option("PRECISE")
    web.get_by_role("button", name="Replace the backgrounds").click()

    status = finished(web, "section[data-batch]")
    assert status in ("succeeded", "failed")
    batch = web.locator("section[data-batch]")
    bad = batch.locator("tr", has_text="broken.jpg")
    assert bad.get_attribute("data-status") == "failed"
    # Its cause names it as the user knows it, not by where the upload was stored.
    assert bad.locator(".error").inner_text().startswith(
        "broken.jpg is not an image format restyle reads")
    assert "null" not in batch.inner_text()
    good = batch.locator("tr", has_text=photo.name)
    assert good.get_attribute("data-status") == "done"
    good.locator(".made img").wait_for()
    status, job = e2e.get(f"/jobs/{good.get_attribute('data-job')}", tenant=TENANT)
    assert job["result"]["mask_labels"] == ["shoe"]
    assert batch.get_by_role("link", name="JSON").count() == 1
    screenshot(web, "background")


def test_a_conditioned_generation_shows_its_map_beside_the_result(e2e, web, room_photos):
    sign_in(web, e2e.key_for(TENANT))
    web.get_by_role("link", name="Conditioned").click()
    drop_image(web, web.locator(".field", has=web.get_by_label("Image")), room_photos[2])
    assert web.get_by_label("Image").evaluate("input => input.files[0].name") == \
        room_photos[2].name
    web.get_by_label("Conditioning", exact=True).select_option("canny")
    web.get_by_label("Low").fill("50")
    web.get_by_label("High").fill("150")
    web.get_by_label("Prompt").fill("a pencil sketch of the room")
    web.get_by_role("button", name="Generate").click()

    assert finished(web, ".job") == "done"
    result = web.get_by_role("region", name="Result")
    for name in ("The canny map", "Generated image 1"):
        picture = result.get_by_role("img", name=name)
        loaded(web, picture)
    screenshot(web, "condition")


def test_an_avatar_is_trained_with_its_loss_curve_then_generates(e2e, web, tmp_path):
    photos = [jpeg_file(tmp_path, f"{name}.jpg", photo)
              for name, photo in faces.portrait_set().items()]
    photos.append(jpeg_file(tmp_path, "cat.jpg", faces.not_faces()["chelsea"]))
    sign_in(web, e2e.key_for(TENANT))
    web.get_by_role("link", name="Avatars").click()
    web.get_by_label("Photos of one person").set_input_files([str(p) for p in photos])
    web.get_by_label("Class word").fill("woman")
    web.get_by_text("Training settings").click()
    web.get_by_label("Steps").fill("12")
    web.get_by_label("Resolution").fill("64")
    web.get_by_label("LoRA rank").fill("4")
    web.get_by_label("Class images").fill("2")
    web.get_by_label("Other settings (JSON)").fill(json.dumps(
        {"learning_rate": 5e-3, "batch_size": 1, "checkpoint_every": 5}))
    web.get_by_role("button", name="Start training").click()

    assert finished(web, ".job") == "done"
    assert int(web.locator("figure:has(svg.loss)").get_attribute("data-points")) >= 2
    check = web.get_by_role("region", name="Face check")
    rejected = check.get_by_role("list", name="Rejected photos").inner_text()
    assert "cat.jpg" in rejected and "face" in rejected.lower()
    assert check.get_by_role("list", name="Accepted photos").locator("li").count() >= 10
    model_id = web.locator(".job").get_attribute("data-job")
    # The verdict is on the job's state from the photo check on, before training starts.
    status, job = e2e.get(f"/jobs/{model_id}", tenant=TENANT)
    assert [photo["code"] for photo in job["photo_check"]["rejected"]] == ["no_face"]
    model = web.locator(f"article[data-model='{model_id}']")
    model.wait_for()
    # The gallery card shows the model's picture: the first face it was trained on.
    loaded(web, model.get_by_role("img", name=", as trained"))
    screenshot(web, "avatar-trained")

    model.get_by_role("button", name="Generate with this model").click()
    form = web.get_by_role("form", name=f"Generate with {model_id}")
    form.get_by_text("More settings").click()
    form.get_by_label("Steps").fill("2")
    form.get_by_label("Seed").fill("1")
    form.get_by_label("Size (pixels, square)").fill("64")
    form.get_by_role("button", name="Generate").click()
    assert finished(web, f"form[aria-label='Generate with {model_id}'] .job") == "done"
    portrait = form.get_by_role("img", name="Generated portrait 1")
    loaded(web, portrait)
    screenshot(web, "avatar-generated")


def failed_job(e2e, tenant: str, room_photos) -> str:
    """A job of the tenant's that fails at once: its photo is not where the job says."""
    [stored] = upload(e2e, tenant, {"room.jpg": room_photos[3].read_bytes()})
    status, answer = e2e.post_json(
        "/jobs", {"pipeline": "condition", "image": stored["uri"].replace("room", "gone"),
                  "params": {"conditioning": "canny"}}, tenant=tenant)
    assert status == 202, answer
    assert wait_for_end(e2e, answer["job_id"], tenant)["status"] == "failed"
    return answer["job_id"]


def test_the_queue_lists_only_the_tenants_jobs_cancels_one_and_retries_a_failed_one(
        e2e, web, room_photos):
    # Another tenant's job, listed for that tenant; this tenant's failed job and long training.
    other = failed_job(e2e, OTHER_TENANT, room_photos)
    assert other in {job["job_id"] for job in e2e.get("/jobs", tenant=OTHER_TENANT)[1]["jobs"]}
    failed = failed_job(e2e, TENANT, room_photos)
    body, headers = multipart({f"{name}.jpg": jpeg(photo)
                               for name, photo in faces.portrait_set().items()},
                              {"params": json.dumps({"steps": 20000, "resolution": 64,
                                                     "rank": 4, "class_images": 1})})
    status, answer = e2e.request("POST", "/avatars", body, headers, tenant=TENANT)
    assert status == 202, answer
    long_job = answer["job_id"]

    sign_in(web, e2e.key_for(TENANT))
    web.get_by_role("link", name="Queue").click()
    row = web.locator(f"tr[data-job='{long_job}']")
    row.wait_for()
    assert web.locator(f"tr[data-job='{failed}']").count() == 1
    assert web.locator(f"tr[data-job='{other}']").count() == 0
    row.get_by_role("button", name="Cancel").click()
    web.wait_for_function(
        "id => document.querySelector(`tr[data-job='${id}']`)?.dataset.status === 'cancelled'",
        arg=long_job, timeout=JOB_S * 1000)
    # The cause is shown in words: who cancelled it; an ended job offers no Cancel.
    assert f"cancelled by tenant {TENANT}" in web.locator(
        f"tr[data-job='{long_job}'] .error").inner_text()
    assert web.locator(f"tr[data-job='{long_job}']").get_by_role(
        "button", name="Cancel").count() == 0
    screenshot(web, "queue")

    # The failed job, retried: a new job of the same pipeline appears, and fails the same way
    # (its photo is still missing), its cause shown.
    failed_row = web.locator(f"tr[data-job='{failed}']")
    cause = failed_row.locator(".error").inner_text()
    assert cause
    known = set(web.locator("tr[data-job]").evaluate_all("rows => rows.map(r => r.dataset.job)"))
    failed_row.get_by_role("button", name="Retry").click()
    retried = web.wait_for_function(
        """known => [...document.querySelectorAll("tr[data-job]")].map(r => r.dataset.job)
               .find(id => !known.includes(id))""", arg=sorted(known),
        timeout=JOB_S * 1000).json_value()
    row = web.locator(f"tr[data-job='{retried}']")
    assert row.locator("td").nth(1).inner_text() == "condition"
    web.wait_for_function(
        "id => document.querySelector(`tr[data-job='${id}']`)?.dataset.status === 'failed'",
        arg=retried, timeout=JOB_S * 1000)
    assert row.locator(".error").inner_text() == cause
    # It failed while the page was open: once the list has caught up, it offers Retry too.
    row.get_by_role("button", name="Retry").wait_for()
    assert row.get_by_role("button", name="Cancel").count() == 0


def test_the_catalog_is_searched_by_text_and_a_product_opened(e2e, web):
    sign_in(web, e2e.key_for(TENANT))
    web.get_by_role("link", name="Catalog").click()
    web.get_by_label("Search products").fill("a grey fabric sofa")
    web.get_by_label("Search products").press("Enter")
    hits = web.get_by_role("list", name="Products found").get_by_role("button")
    hits.first.wait_for()
    status, found = e2e.get("/products/search?q=a%20grey%20fabric%20sofa", tenant=TENANT)
    assert hits.count() == len(found["products"])
    assert hits.first.inner_text() == found["products"][0]["caption"]
    hits.first.click()
    product = web.locator("article.product")
    assert product.get_by_role("heading").inner_text() == found["products"][0]["caption"]
    loaded(web, product.get_by_role("img"))  # the product's picture, read through the API
    screenshot(web, "catalog")


def test_on_a_phone_behind_a_proxy_under_a_prefix_it_works_from_the_keyboard(e2e, browser,
                                                                          room_photos):
    with ReverseProxy(e2e.status_url, "/restyle/") as proxy:
        context = browser.new_context(viewport={"width": 390, "height": 844},
                                      is_mobile=True, has_touch=True)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(proxy.url)
        # Signed in from the keyboard alone: the key field takes the focus, Enter submits.
        page.keyboard.type(e2e.key_for(TENANT))
        page.keyboard.press("Enter")
        page.get_by_role("navigation", name="Pipelines").wait_for()
        page.get_by_role("link", name="Queue").focus()
        page.keyboard.press("Enter")
        page.get_by_role("heading", name="Queue").wait_for()
        page.locator(".batches li").first.wait_for()  # the page's lists are in
        assert page.url == proxy.url + "#/queue"
        # Every call went through the proxy's prefix; nothing spills sideways on a phone.
        assert proxy.paths and all(path.startswith("/restyle/") for path in proxy.paths)
        # The job list came over its event stream, through the prefix too.
        assert "/restyle/tenant/events" in proxy.paths
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        screenshot(page, "phone-queue")

        # A whole job through the prefix: the upload, the job's event stream, its images.
        page.get_by_role("link", name="Conditioned").focus()
        page.keyboard.press("Enter")
        page.get_by_label("Image").set_input_files(str(room_photos[2]))
        page.get_by_label("Conditioning", exact=True).select_option("depth")
        page.get_by_role("button", name="Generate").focus()
        page.keyboard.press("Enter")
        assert finished(page, ".job") == "done"
        result = page.get_by_role("region", name="Result")
        for name in ("The depth map", "Generated image 1"):
            loaded(page, result.get_by_role("img", name=name))
        assert any(path.startswith("/restyle/uploads") for path in proxy.paths)
        assert any(path.startswith("/restyle/jobs/") and path.endswith("/events")
                   for path in proxy.paths)
        assert all(path.startswith("/restyle/") for path in proxy.paths)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        screenshot(page, "phone-condition")
        context.close()


class ReverseProxy:
    """A reverse proxy in front of the status API that serves it under a path prefix (as an
    ingress would), on an event loop in a thread of its own (Playwright's runs in this one):
    the part of a deployment outside restyle."""

    def __init__(self, upstream: str, prefix: str):
        self.upstream, self.prefix, self.paths = upstream, prefix, []
        self.ready, self.url = threading.Event(), None

    async def relay(self, request):
        from aiohttp import ClientSession, web as aioweb

        self.paths.append(request.path)
        tail = request.path[len(self.prefix):]
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in ("host", "content-length")}
        async with ClientSession() as session:
            async with session.request(request.method, f"{self.upstream}/{tail}",
                                       params=request.query, data=await request.read(),
                                       headers=headers) as upstream:
                response = aioweb.StreamResponse(status=upstream.status, headers={
                    k: v for k, v in upstream.headers.items() if k.lower() in (
                        "content-type", "cache-control", "content-security-policy")})
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                return response

    async def serve(self):
        from aiohttp import web as aioweb

        app = aioweb.Application()
        app.router.add_route("*", self.prefix + "{tail:.*}", self.relay)
        runner = aioweb.AppRunner(app)
        await runner.setup()
        site = aioweb.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}{self.prefix}"
        self.loop, self.stop = asyncio.get_running_loop(), asyncio.Event()
        self.ready.set()
        await self.stop.wait()
        await runner.cleanup()

    def __enter__(self):
        self.thread = threading.Thread(target=lambda: asyncio.run(self.serve()), daemon=True)
        self.thread.start()
        assert self.ready.wait(10), "the proxy did not start"
        return self

    def __exit__(self, *_exc):
        self.loop.call_soon_threadsafe(self.stop.set)  # set on the proxy's own loop
        self.thread.join(10)
