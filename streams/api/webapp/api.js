// The status API as the page calls it: every URL relative to the page (so a reverse proxy's
// path prefix is kept), every call with the signed-in key, every refusal an ApiError whose
// message is the API's own sentence.

const KEY = "restyle.api-key";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  set key(value) {
    if (value) sessionStorage.setItem(KEY, value); else sessionStorage.removeItem(KEY);
  },
};

export function url(path) {
  return new URL(path.replace(/^\//, ""), document.baseURI).toString();
}

function headers(extra = {}) {
  return { Authorization: `Bearer ${session.key}`, ...extra };
}

async function refusal(response) {
  let code = "http_" + response.status, message = response.statusText || "request failed";
  try {
    const body = await response.json();
    if (body && body.error) ({ code, message } = body.error);
  } catch { /* not JSON: keep the status line */ }
  if (response.status === 401) message = `Not signed in: ${message}`;
  return new ApiError(response.status, code, message);
}

export async function call(path, { method = "GET", json, form, signal } = {}) {
  const options = { method, headers: headers(), signal };
  if (json !== undefined) {
    options.body = JSON.stringify(json);
    options.headers["Content-Type"] = "application/json";
  } else if (form !== undefined) {
    options.body = form;
  }
  let response;
  try {
    response = await fetch(url(path), options);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "unreachable", "The restyle API cannot be reached; check the connection and try again.");
  }
  if (!response.ok) throw await refusal(response);
  return response.status === 204 ? null : response.json();
}

// What the API serves as a file, as a blob: URL (an <img> cannot send the key itself).
const blobs = new Map();
async function blobUrl(path) {
  if (!blobs.has(path)) {
    blobs.set(path, (async () => {
      const response = await fetch(url(path), { headers: headers() });
      if (!response.ok) throw await refusal(response);
      return URL.createObjectURL(await response.blob());
    })());
  }
  try {
    return await blobs.get(path);
  } catch (error) {
    blobs.delete(path);
    throw error;
  }
}

// A stored file of the tenant's (an upload, a result).
export function fileUrl(uri) {
  return blobUrl(`files?uri=${encodeURIComponent(uri)}`);
}

// A catalog product's image.
export function productImageUrl(productId) {
  return blobUrl(`products/${encodeURIComponent(productId)}/image`);
}

export async function upload(files) {
  const form = new FormData();
  for (const file of files) form.append("file", file, file.name);
  return (await call("uploads", { method: "POST", form })).files;
}
