// Room makeover: a room photo (or a drawn sample) and a style in; the render followed live;
// the result beside the original with a before/after slider, and a box over each product
// found in the result with its catalog match.

import { call } from "./api.js";
import {
  downloadLink, errorLine, field, filled, h, image, jobView, numberOrNothing, productImage, say,
} from "./ui.js";

export async function makeoverPage(container) {
  const { styles } = await call("styles");
  const photo = h("input", { type: "file", accept: "image/*", name: "image" });
  const chosen = h("p", { class: "hint", "aria-live": "polite" });
  let file = null;
  photo.addEventListener("change", () => {
    file = photo.files[0] || null;
    chosen.textContent = file ? `Chosen: ${file.name}` : "";
  });
  const sample = h("button", { type: "button", class: "quiet", text: "Use a sample room",
    onclick: async () => {
      file = await sampleRoom();
      chosen.textContent = `Chosen: ${file.name} (a drawn sample room)`;
    } });
  const style = h("select", { name: "style" },
                  styles.map((s) => h("option", { value: s.name, text: s.name })));
  const description = h("p", { class: "hint style-description", "aria-live": "polite" });
  const describe = () => {
    description.textContent = styles.find((s) => s.name === style.value)?.description || "";
  };
  style.addEventListener("change", describe);
  describe();
  const steps = h("input", { type: "number", min: 1, max: 150, name: "steps" });
  const seed = h("input", { type: "number", min: 0, name: "seed" });
  const guidance = h("input", { type: "number", min: 0, max: 30, step: 0.5, name: "guidance" });
  const negative = h("input", { type: "text", name: "negative_prompt" });
  const problem = errorLine();
  const progress = h("div", { class: "live" });
  const outcome = h("div", { class: "outcome" });
  const submit = h("button", { type: "submit", text: "Restyle the room" });
  const form = h("form", { class: "card", "aria-label": "Room makeover" },
    field("Room photo", photo, "A photo of a room; its layout is kept."), sample, chosen,
    field("Style", style), description,
    h("details", {}, h("summary", { text: "More settings" }),
      field("Steps", steps, "Denoising steps (more: slower, finer)."),
      field("Seed", seed, "The same seed and settings give the same image."),
      field("Guidance", guidance, "How closely the image follows the prompt."),
      field("Avoid (negative prompt)", negative)),
    submit, problem);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    say(problem);
    if (!file) return say(problem, { message: "Choose a room photo first (or use the sample)." });
    const params = filled({ steps: numberOrNothing(steps.value), seed: numberOrNothing(seed.value),
                            guidance: numberOrNothing(guidance.value),
                            negative_prompt: negative.value });
    const body = new FormData();
    body.append("image", file, file.name);
    body.append("style", style.value);
    if (Object.keys(params).length) body.append("params", JSON.stringify(params));
    submit.disabled = true;
    try {
      const { job_id: jobId } = await call("jobs", { method: "POST", form: body });
      const view = jobView(jobId, "room_makeover");
      progress.replaceChildren(view.element);
      outcome.replaceChildren();
      const state = await view.finished;
      if (state?.status === "done") outcome.append(await result(state, file));
    } catch (error) {
      say(problem, error);
    } finally {
      submit.disabled = false;
    }
  });
  container.append(form, progress, outcome);
}

async function result(state, original) {
  const found = state.result;
  const before = h("img", { alt: "The room before", src: URL.createObjectURL(original) });
  const after = await image(found.images[0].uri, "The restyled room");
  const slider = h("input", { type: "range", min: 0, max: 100, value: 50,
                              "aria-label": "Before and after: drag to compare" });
  const overlay = h("div", { class: "after" }, after);
  const place = () => { overlay.style.clipPath = `inset(0 0 0 ${slider.value}%)`; };
  slider.addEventListener("input", place);
  place();
  const boxes = h("div", { class: "boxes" });
  const compare = h("div", { class: "compare" }, before, overlay, boxes);
  const drawBoxes = () => {
    boxes.replaceChildren(...found.products.map((product, n) => {
      const { x0, y0, x1, y1 } = product.box;
      const width = after.naturalWidth || 1, height = after.naturalHeight || 1;
      const box = h("div", { class: "box", title: `${product.label}: ${product.caption}`,
                             "data-product": product.product_id },
                    h("span", { text: `${n + 1}` }));
      Object.assign(box.style, { left: `${(100 * x0) / width}%`, top: `${(100 * y0) / height}%`,
                                 width: `${(100 * (x1 - x0)) / width}%`,
                                 height: `${(100 * (y1 - y0)) / height}%` });
      return box;
    }));
  };
  // The render's shape is the frame: the photo was stretched to it for the depth map the
  // render kept, so stretched the same way it lines up with the result under the slider.
  const frame = () => {
    compare.style.aspectRatio = `${after.naturalWidth || 1} / ${after.naturalHeight || 1}`;
    drawBoxes();
  };
  if (after.complete) frame(); else after.addEventListener("load", frame);
  // Each match with its catalog picture, to shop it.
  const pictures = await Promise.all(found.products.map((product) => productImage(
    product.product_id, `Catalog product ${product.product_id}`, { class: "thumb" })));
  const products = h("ol", { class: "products", "aria-label": "Products in the result" },
    found.products.map((product, n) => h("li", {}, pictures[n],
      h("strong", { text: product.label }), " — ", product.caption,
      h("span", { class: "score", text: ` (match ${(product.score * 100).toFixed(0)}%)` }),
      h("small", { text: ` catalog product ${product.product_id}` }))));
  const empty = found.products.length ? null
    : h("p", { class: "hint", text: "No catalog products were found in the result." });
  return h("section", { class: "card", "aria-label": "Result" },
    h("h3", { text: `Your ${found.style || ""} room` }), compare, slider, products, empty,
    h("p", { class: "hint", text: `Seed ${found.seed}. Prompt: ${found.prompt || ""}` }),
    await downloadLink(found.images[0].uri, `restyled-${state.job_id}.png`));
}

// A room drawn on a canvas: wall, floor, window, sofa and lamp, for trying the app without a
// photo at hand.
async function sampleRoom() {
  const canvas = document.createElement("canvas");
  canvas.width = 512;
  canvas.height = 384;
  const draw = canvas.getContext("2d");
  draw.fillStyle = "#d9d2c5"; draw.fillRect(0, 0, 512, 250);
  draw.fillStyle = "#8a6a4a"; draw.fillRect(0, 250, 512, 134);
  draw.fillStyle = "#a9c8e8"; draw.fillRect(300, 50, 150, 110);
  draw.strokeStyle = "#fff"; draw.lineWidth = 6; draw.strokeRect(300, 50, 150, 110);
  draw.fillStyle = "#4d5b6a"; draw.fillRect(60, 190, 200, 90);
  draw.fillStyle = "#3c4854"; draw.fillRect(60, 170, 200, 30);
  draw.fillStyle = "#222"; draw.fillRect(400, 200, 6, 90);
  draw.fillStyle = "#f3e2a9"; draw.beginPath(); draw.arc(403, 195, 22, Math.PI, 0); draw.fill();
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  return new File([blob], "sample-room.png", { type: "image/png" });
}
