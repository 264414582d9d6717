// The web app's shell: sign in with an API key (kept in this tab's sessionStorage), then one
// page per pipeline, chosen by the URL's #fragment so that links and the back button work.

import { call, session } from "./api.js";
import { avatarsPage } from "./avatars.js";
import { backgroundPage } from "./background.js";
import { catalogPage } from "./catalog.js";
import { conditionPage } from "./condition.js";
import { makeoverPage } from "./makeover.js";
import { queuePage } from "./queue.js";

const PAGES = {
  makeover: ["Room makeover", makeoverPage],
  background: ["Background replacement", backgroundPage],
  condition: ["Conditioned generation", conditionPage],
  avatars: ["Avatars", avatarsPage],
  queue: ["Queue", queuePage],
  catalog: ["Catalog", catalogPage],
};

const $ = (id) => document.getElementById(id);
let tenant = null;

async function signIn(key) {
  session.key = key;
  try {
    tenant = await call("tenant");
  } catch (error) {
    session.key = null;
    tenant = null;
    throw error;
  }
}

function showSignIn(message = "") {
  $("sign-in").hidden = false;
  $("nav").hidden = $("who").hidden = true;
  $("page").replaceChildren();
  $("sign-in-error").textContent = message;
  $("api-key").focus();
}

// Aborted when the page is left (another page, signing out): its event streams close.
let pageLeft = new AbortController();

async function route() {
  pageLeft.abort();
  pageLeft = new AbortController();
  if (!tenant) return;
  const name = location.hash.replace(/^#\/?/, "").split("/")[0] || "makeover";
  const [title, page] = PAGES[name] || PAGES.makeover;
  document.title = `${title} · restyle`;
  for (const link of $("nav").querySelectorAll("a")) {
    if (link.getAttribute("href") === `#/${name}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  // Each visit renders into its own element: a page still loading when the user moves on
  // (its first call in flight) then finishes into a detached element, never beside the next.
  const container = document.createElement("div");
  $("page").replaceChildren(container);
  const heading = document.createElement("h2");
  heading.textContent = title;
  container.append(heading);
  try {
    await page(container, { tenant, signal: pageLeft.signal });
  } catch (error) {
    if (error.status === 401) return showSignIn(error.message);
    const line = document.createElement("p");
    line.className = "error";
    line.setAttribute("role", "alert");
    line.textContent = error.message;
    container.append(line);
  }
}

function signedIn() {
  $("sign-in").hidden = true;
  $("nav").hidden = $("who").hidden = false;
  $("tenant-name").textContent = `Tenant ${tenant.tenant}`;
  route();
}

$("sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("sign-in-error").textContent = "";
  try {
    await signIn($("api-key").value.trim());
    $("api-key").value = "";
    signedIn();
  } catch (error) {
    $("sign-in-error").textContent = error.status === 401
      ? "That key was refused: it is unknown, mistyped or revoked."
      : error.message;
  }
});

$("sign-out").addEventListener("click", () => {
  session.key = null;
  tenant = null;
  pageLeft.abort();
  showSignIn();
});

window.addEventListener("hashchange", route);

if (session.key) {
  signIn(session.key).then(signedIn, (error) => showSignIn(error.message));
} else {
  showSignIn();
}
