// Avatars: 10-15 photos of one person in; which the face check accepted or rejected and why;
// the training followed with a progress bar and its loss curve; the tenant's models as a
// gallery; images generated from a model.

import { call } from "./api.js";
import {
  errorLine, field, filled, h, image, jobView, numberOrNothing, say,
} from "./ui.js";

// A model's picture: the first face it was trained on (a model trained before models kept
// one shows its subject's initial instead).
async function cover(model) {
  if (model.cover) return image(model.cover, `${model.subject}, as trained`, { class: "cover" });
  return h("span", { class: "cover none", role: "img", "aria-label": `${model.subject}: no picture`,
                     text: (model.subject || "?")[0].toUpperCase() });
}

export async function avatarsPage(container) {
  const gallery = h("div", { class: "gallery", "aria-live": "polite" });
  const generator = h("div", { class: "live" });
  const refresh = async () => {
    const { models } = await call("models");
    gallery.replaceChildren(...(models.length ? await Promise.all(models.map(async (model) => h("article", {
      class: "model card", "data-model": model.model_id },
      await cover(model),
      h("h4", { text: model.model_id }),
      h("p", { text: `${model.subject} (${model.class_word}), trigger “${model.trigger}”, ` +
                     `${model.photos} photos, ${model.status}` }),
      h("button", { type: "button", text: "Generate with this model",
                    onclick: () => generator.replaceChildren(generateForm(model)) }))))
      : [h("p", { class: "hint", text: "No models yet: train one above." })]));
  };
  container.append(trainForm(refresh), h("h3", { text: "Your models" }), gallery, generator);
  await refresh();
}

function trainForm(refresh) {
  const photos = h("input", { type: "file", accept: "image/*", multiple: true, name: "photos" });
  const subject = h("input", { type: "text", name: "subject", placeholder: "zqkv",
                               pattern: "[a-z0-9]{2,16}" });
  const classWord = h("input", { type: "text", name: "class_word", placeholder: "person" });
  const steps = h("input", { type: "number", min: 1, name: "steps" });
  const resolution = h("input", { type: "number", min: 64, max: 1024, step: 8,
                                  name: "resolution" });
  const rank = h("input", { type: "number", min: 1, max: 128, name: "rank" });
  const classImages = h("input", { type: "number", min: 1, name: "class_images" });
  const other = h("textarea", { name: "other", rows: 2, placeholder: '{"learning_rate": 0.0001}' });
  const problem = errorLine();
  const submit = h("button", { type: "submit", text: "Start training" });
  const progress = h("div", { class: "live" });
  const form = h("form", { class: "card", "aria-label": "Train an avatar" },
    field("Photos of one person", photos,
          "10 to 15 photos, one face each, varied angles and light."),
    field("Subject word", subject, "A rare word that will stand for this person."),
    field("Class word", classWord, "What the person is: person, woman, man, child…"),
    h("details", {}, h("summary", { text: "Training settings" }),
      field("Steps", steps), field("Resolution", resolution), field("LoRA rank", rank),
      field("Class images", classImages),
      field("Other settings (JSON)", other, "Any other training setting, as JSON.")),
    submit, problem, progress);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    say(problem);
    if (!photos.files.length) return say(problem, { message: "Choose the photos first." });
    let params;
    try {
      params = { ...(other.value.trim() ? JSON.parse(other.value) : {}),
                 ...filled({ steps: numberOrNothing(steps.value),
                             resolution: numberOrNothing(resolution.value),
                             rank: numberOrNothing(rank.value),
                             class_images: numberOrNothing(classImages.value) }) };
    } catch {
      return say(problem, { message: "Other settings must be a JSON object." });
    }
    const body = new FormData();
    for (const file of photos.files) body.append("photos", file, file.name);
    if (subject.value) body.append("subject", subject.value);
    if (classWord.value) body.append("class_word", classWord.value);
    body.append("params", JSON.stringify(params));
    submit.disabled = true;
    try {
      const { job_id: jobId } = await call("avatars", { method: "POST", form: body });
      const curve = lossCurve();
      const check = h("div", { class: "check" });
      let checked = false;
      const view = jobView(jobId, "avatar_train", { onProgress: (state) => {
        curve.add(state);
        // The face check's verdict is on the job once the photos are checked: shown before
        // the training starts.
        if (state.photo_check && !checked) {
          checked = true;
          check.replaceChildren(verdicts(state.photo_check));
        }
      } });
      progress.replaceChildren(view.element, check, curve.element);
      const state = await view.finished;
      if (state?.status === "done") {
        check.prepend(h("h4", { text: `Model ${state.result.model_id} is ready (final loss ` +
                                      `${state.result.final_loss.toFixed(4)})` }));
        await refresh();
      }
    } catch (error) {
      say(problem, error);
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

// The training loss, step by step, as an SVG line.
function lossCurve() {
  const points = [];
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 300 100");
  svg.setAttribute("class", "loss");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "Training loss");
  const line = document.createElementNS(ns, "polyline");
  svg.append(line);
  const caption = h("figcaption", { text: "Training loss" });
  const element = h("figure", { hidden: true }, svg, caption);
  const add = (state) => {
    const progress = state.progress;
    if (!progress || progress.loss === null || progress.loss === undefined) return;
    if (points.length && points[points.length - 1].step >= progress.step) return;
    points.push({ step: progress.step, loss: progress.loss, total: progress.total });
    const top = Math.max(...points.map((p) => p.loss)) || 1;
    line.setAttribute("points", points.map((p) =>
      `${(300 * p.step) / p.total},${100 - (95 * p.loss) / top}`).join(" "));
    element.hidden = false;
    element.dataset.points = String(points.length);
    caption.textContent = `Training loss: ${progress.loss.toFixed(4)} at step ${progress.step}`;
  };
  return { element, add };
}

function verdicts(check) {
  const name = (uri) => uri.split("/").pop();
  return h("section", { class: "card", "aria-label": "Face check" },
    h("p", { text: `${check.accepted.length} photos accepted` }),
    h("ul", { class: "accepted", "aria-label": "Accepted photos" },
      check.accepted.map((uri) => h("li", { text: name(uri) }))),
    h("p", { text: `${check.rejected.length} photos rejected` }),
    h("ul", { class: "rejected", "aria-label": "Rejected photos" },
      check.rejected.map((photo) => h("li", {},
        h("strong", { text: name(photo.image) }), `: ${photo.reason} (${photo.code})`))));
}

function generateForm(model) {
  const prompt = h("input", { type: "text", name: "prompt", required: true,
                              value: "a portrait of {subject}, studio light" });
  const negative = h("input", { type: "text", name: "negative_prompt" });
  const count = h("input", { type: "number", min: 1, max: 4, value: 1, name: "num_images" });
  const steps = h("input", { type: "number", min: 1, max: 150, name: "steps" });
  const seed = h("input", { type: "number", min: 0, name: "seed" });
  const size = h("input", { type: "number", min: 64, max: 2048, step: 8, name: "size" });
  const problem = errorLine();
  const submit = h("button", { type: "submit", text: "Generate" });
  const progress = h("div", { class: "live" });
  const form = h("form", { class: "card", "aria-label": `Generate with ${model.model_id}` },
    h("h3", { text: `Generate with ${model.model_id}` }),
    field("Prompt", prompt, "{subject} stands for the person."),
    field("Avoid (negative prompt)", negative), field("Images", count),
    h("details", {}, h("summary", { text: "More settings" }), field("Steps", steps),
      field("Seed", seed), field("Size (pixels, square)", size)),
    submit, problem, progress);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    say(problem);
    submit.disabled = true;
    try {
      const side = numberOrNothing(size.value);
      const { job_id: jobId } = await call(`models/${encodeURIComponent(model.model_id)}/generate`, {
        method: "POST",
        json: filled({ prompt: prompt.value, negative_prompt: negative.value,
                       params: filled({ num_images: numberOrNothing(count.value),
                                        steps: numberOrNothing(steps.value),
                                        seed: numberOrNothing(seed.value),
                                        width: side, height: side }) }) });
      const view = jobView(jobId, "avatar_generate");
      progress.replaceChildren(view.element);
      const state = await view.finished;
      if (state?.status === "done") {
        progress.append(h("div", { class: "gallery generated" }, await Promise.all(
          state.result.images.map((made, n) => image(made.uri, `Generated portrait ${n + 1}`)))));
      }
    } catch (error) {
      say(problem, error);
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}
