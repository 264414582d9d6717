// Conditioned generation: an image in, a canny/segmentation/depth map made from it, a ControlNet
// render that follows the map; the map and the result shown side by side.

import { call, upload } from "./api.js";
import {
  downloadLink, errorLine, field, filled, h, image, jobView, numberOrNothing, say,
} from "./ui.js";

export async function conditionPage(container) {
  const photo = h("input", { type: "file", accept: "image/*", name: "image" });
  const kind = h("select", { name: "conditioning" },
                 h("option", { value: "canny", text: "Canny edges" }),
                 h("option", { value: "seg", text: "Segmentation" }),
                 h("option", { value: "depth", text: "Depth" }));
  const low = h("input", { type: "number", min: 0, max: 1000, value: 100, name: "canny_low" });
  const high = h("input", { type: "number", min: 0, max: 1000, value: 200, name: "canny_high" });
  const thresholds = h("fieldset", {}, h("legend", { text: "Edge thresholds" }),
                       field("Low", low), field("High", high));
  kind.addEventListener("change", () => { thresholds.hidden = kind.value !== "canny"; });
  const prompt = h("input", { type: "text", name: "prompt",
                              placeholder: "a watercolour painting of the same scene" });
  const steps = h("input", { type: "number", min: 1, max: 150, name: "steps" });
  const seed = h("input", { type: "number", min: 0, name: "seed" });
  const scale = h("input", { type: "number", min: 0, max: 2, step: 0.1,
                             name: "conditioning_scale" });
  const problem = errorLine();
  const submit = h("button", { type: "submit", text: "Generate" });
  const progress = h("div", { class: "live" });
  const outcome = h("div", { class: "outcome" });
  const form = h("form", { class: "card", "aria-label": "Conditioned generation" },
    field("Image", photo, "Choose or drop one: its edges, regions or depth guide the new image."),
    field("Conditioning", kind), thresholds, field("Prompt", prompt),
    h("details", {}, h("summary", { text: "More settings" }), field("Steps", steps),
      field("Seed", seed), field("Conditioning scale", scale,
                                 "How strongly the map steers the image (0 to 2).")),
    submit, problem);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    say(problem);
    const file = photo.files[0];
    if (!file) return say(problem, { message: "Choose an image first." });
    submit.disabled = true;
    try {
      const [stored] = await upload([file]);
      const params = filled({
        conditioning: kind.value, prompt: prompt.value, steps: numberOrNothing(steps.value),
        seed: numberOrNothing(seed.value), conditioning_scale: numberOrNothing(scale.value),
        ...(kind.value === "canny" ? { canny_low: numberOrNothing(low.value),
                                       canny_high: numberOrNothing(high.value) } : {}) });
      const { job_id: jobId } = await call("jobs", {
        method: "POST", json: { pipeline: "condition", image: stored.uri, params } });
      const view = jobView(jobId, "condition");
      progress.replaceChildren(view.element);
      outcome.replaceChildren();
      const state = await view.finished;
      if (state?.status === "done") {
        const found = state.result;
        const map = found.control_map
          ? await image(found.control_map, `The ${found.conditioning} map`)
          : h("p", { class: "hint", text: "No map was kept for this job." });
        const made = await Promise.all(found.images.map((made, n) =>
          image(made.uri, `Generated image ${n + 1}`)));
        outcome.append(h("section", { class: "card", "aria-label": "Result" },
          h("div", { class: "side-by-side" },
            h("figure", {}, map, h("figcaption", { text: `${found.conditioning} map` })),
            h("figure", {}, made[0], h("figcaption", { text: "Result" }))),
          made.slice(1),
          h("p", { class: "hint", text: `Seed ${found.seed}. Prompt: ${found.prompt || ""}` }),
          await downloadLink(found.images[0].uri, `generated-${jobId}.png`)));
      }
    } catch (error) {
      say(problem, error);
    } finally {
      submit.disabled = false;
    }
  });
  container.append(form, progress, outcome);
}
