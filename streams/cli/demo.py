"""`restyle demo`: the room makeover end to end on the embedded stack, and catalog ingestion
from the command line."""
from __future__ import annotations

import html
import shutil
import time
from pathlib import Path

import click

from streams.cli import catalog, client, weights
from streams.core.settings import Settings, load_settings

SAMPLE_ROOMS = ["pexels-2416933.jpg", "pexels-36030587.jpg", "pexels-36358763.jpg",
                "pexels-1317558.jpg", "pexels-2560067.jpg"]


def missing_real_weights(settings: Settings) -> list[str]:
    """Model ids of the default public weights that are not available offline."""
    return [item.model_id for item in weights.wanted(settings)
            if item.model_id and not weights.present(item, None)]


def ingest_source(settings: Settings, source: str, category_from_folder: bool = False,
                  ingest_id: str | None = None, timeout_s: float = 3600):
    """Publish a catalog source to the running stack and follow it with a progress bar."""
    from tqdm import tqdm

    ingest_id, total = client.run(catalog.start_ingest(settings, source, category_from_folder,
                                                       ingest_id))
    click.echo(f"ingest {ingest_id}: {total} products published")
    with tqdm(total=total, unit="product", desc="indexed") as bar:
        def advance(state) -> None:
            bar.update(state.processed - bar.n)

        state = catalog.wait_for_ingest(settings, ingest_id, total,
                                        timeout_s, on_progress=advance) if total else \
            catalog.IngestState(ingest_id=ingest_id, finished=True)
    click.echo(catalog.describe_ingest(state))
    return state


def sample_catalog_dir(target: Path) -> Path:
    import csv

    import interior_photos

    target.mkdir(parents=True, exist_ok=True)
    listing = Path(__file__).with_name("sample_catalog.csv")
    shutil.copy(listing, target / "catalog.csv")
    with open(listing, newline="") as handle:
        for row in csv.DictReader(handle):
            shutil.copy(Path(interior_photos.get_photo_dir()) / row["image"], target / row["image"])
    return target


async def save_results(settings: Settings, photos: list[Path], outcomes: list[dict],
                       out: Path) -> Path:
    """Each room's photo and its restyled images into out, with an index.html showing them
    side by side: the stack (and its storage) stops with the demo, these stay."""
    from streams.adapters.storage import Storage

    out.mkdir(parents=True, exist_ok=True)
    storage = Storage.from_settings(settings)
    rows = []
    try:
        for n, (photo, job) in enumerate(zip(photos, outcomes), start=1):
            before = f"room-{n}-before{photo.suffix.lower()}"
            shutil.copyfile(photo, out / before)
            afters = []
            for k, image in enumerate((job.get("result") or {}).get("images", []), start=1):
                after = f"room-{n}-after-{k}.png"
                (out / after).write_bytes(await storage.get(image["uri"]))
                afters.append(after)
            cause = (job.get("error") or {}).get("message", "")
            rows.append(f"<tr><td><img src=\"{before}\" alt=\"room {n}\"></td><td>" +
                        ("".join(f"<img src=\"{a}\" alt=\"room {n} restyled\">" for a in afters)
                         or html.escape(f"{job['status']}: {cause}")) + "</td></tr>")
    finally:
        await storage.close()
    (out / "index.html").write_text(
        "<!doctype html><meta charset=utf-8><title>restyle demo</title>"
        "<style>img{max-width:45vw}td{vertical-align:top}</style>"
        "<table><tr><th>Before</th><th>After</th></tr>" + "".join(rows) + "</table>\n")
    return out


def run_demo(models: str | None, rooms: int, style: str, serve: bool, serve_until_signal,
             out: Path | None = None) -> int:
    from streams.stack.up import RestyleStack  # imports the model code: only when needed

    settings = Settings()
    if models is None:
        missing = missing_real_weights(settings)
        if missing:
            click.echo("Real weights are not available offline (not in the Hugging Face cache "
                       f"and the hub is unreachable): {', '.join(missing)}.\n"
                       "Running on tiny random-weight models instead: the pipeline is real, "
                       "the pictures are noise.")
            models = "tiny"
    # The makeover needs no trainer; a stack kept serving gets one, for the web app's avatars.
    stack = RestyleStack(settings, models, trainer_workers=1 if serve else 0)
    click.echo("starting the stack ...")
    started = time.monotonic()
    endpoints = stack.start()
    click.echo(f"ready in {time.monotonic() - started:.1f}s; models: {stack.models_note}")
    click.echo(f"kafka {endpoints['kafka_bootstrap']}  s3 {endpoints['s3_endpoint']}  "
               f"status API {endpoints['status_url']}")
    try:
        running = load_settings(state_dir=stack.state_dir)  # completed from endpoints.json
        catalog = sample_catalog_dir(stack.state_dir / "sample-catalog")
        ingest_source(running, str(catalog))
        import interior_photos

        photos = [Path(interior_photos.get_photo_dir()) / name for name in SAMPLE_ROOMS[:rooms]]
        job_ids = [client.run(client.submit(running, str(p), style)) for p in photos]
        click.echo(f"submitted {len(job_ids)} rooms in style {style!r}")
        outcomes = [client.wait_for_job(running, job_id, on_change=_progress_line)
                    for job_id in job_ids]
        for job in outcomes:
            click.echo(client.describe(job))
        failed = [job for job in outcomes if job["status"] != "done"]
        click.echo(f"{len(outcomes) - len(failed)} of {len(outcomes)} jobs done")
        if out is not None:
            saved = client.run(save_results(running, photos, outcomes, out.resolve()))
            click.echo(f"before and after: {saved / 'index.html'}")
        if serve:
            click.echo("serving; Ctrl-C stops everything.")
            serve_until_signal(stack)
        return 1 if failed else 0
    finally:
        stack.stop()


def _progress_line(job: dict) -> None:
    progress = job.get("progress")
    tail = f" (render step {progress['step']}/{progress['total']})" if progress else ""
    click.echo(f"  {job['job_id'][:12]} {job['status']}{tail}")
