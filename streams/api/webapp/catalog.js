// The product catalog: search by text (k-NN over the products' embeddings), open a product.

import { call } from "./api.js";
import { errorLine, field, h, productImage, say } from "./ui.js";

export async function catalogPage(container) {
  const query = h("input", { type: "search", name: "q", required: true,
                             placeholder: "a green velvet sofa" });
  const problem = errorLine();
  const hits = h("ol", { class: "hits", "aria-label": "Products found", "aria-live": "polite" });
  const detail = h("div", { class: "live" });
  const form = h("form", { class: "card", role: "search", "aria-label": "Search the catalog" },
    field("Search products", query), h("button", { type: "submit", text: "Search" }), problem);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    say(problem);
    try {
      const { products } = await call(`products/search?q=${encodeURIComponent(query.value)}`);
      hits.replaceChildren(...(products.length ? products.map((product) => h("li", {},
        h("button", { type: "button", class: "link", "data-product": product.product_id,
                      text: product.caption, onclick: () => show(product.product_id, detail, problem) }),
        h("span", { class: "score", text: ` ${product.category || ""} · match ${(product.score * 100).toFixed(0)}%` })))
        : [h("li", { class: "hint", text: "No products match." })]));
    } catch (error) {
      say(problem, error);
    }
  });
  container.append(form, hits, detail);
}

let latest = 0;  // the product asked for last: a slower earlier answer does not replace it

async function show(productId, detail, problem) {
  const asked = ++latest;
  try {
    const product = await call(`products/${encodeURIComponent(productId)}`);
    const picture = product.image ? await productImage(productId, product.caption,
                                                       { class: "product-image" }) : null;
    if (asked !== latest) return;
    detail.replaceChildren(h("article", { class: "card product", "data-product": productId },
      h("h3", { text: product.caption }), picture,
      h("dl", {}, Object.entries(product).filter(([name]) => !["caption", "url", "image_url", "embedding"].includes(name))
        .flatMap(([name, value]) => [h("dt", { text: name }),
                                     h("dd", { text: typeof value === "object" ? JSON.stringify(value) : String(value) })]))));
  } catch (error) {
    say(problem, error);
  }
}
