// Talking to the node: fetch with the API key, and OpenAI-shaped errors in plain words.
// (Reading streamed answers is stream.js.)

const KEY_STORAGE = "llamanet.apiKey";

export const NODE_HEADER = "X-LlamaNet-Node";

export function getApiKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

export function setApiKey(key) {
  try {
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
  } catch {
    /* storage disabled: the key lives for this page only */
  }
  memoryKey = key || "";
}

let memoryKey = "";

function authHeaders() {
  const key = getApiKey() || memoryKey;
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** An error to show the user: `message` is plain words; `status`/`code` are for the code. */
export class ApiError extends Error {
  constructor(message, { status = 0, code = null, kind = "api", retryAfter = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.kind = kind; // "api" | "auth" | "network" | "aborted"
    this.retryAfter = retryAfter;
  }
}

export const NODE_GONE = "The node stopped responding.";

// Asked for an API key when a call returns 401; set by the app (returns true if a key was given).
let onUnauthorized = async () => false;
export function setUnauthorizedHandler(handler) {
  onUnauthorized = handler;
}

/**
 * fetch() with the API key. On 401 it asks for a key once and retries (`background` calls, like
 * polling, may be told no without asking again); failures that never
 * reached the node become ApiError(kind "network"); an abort becomes ApiError(kind "aborted").
 * Other non-2xx statuses are turned into ApiError with a plain-words message.
 */
export async function apiFetch(path, { method = "GET", body, signal, context = {}, background = false } = {}) {
  for (let attempt = 0; ; attempt += 1) {
    let response;
    try {
      response = await fetch(path, {
        method,
        signal,
        headers: { ...authHeaders(), ...(body !== undefined ? { "Content-Type": "application/json" } : {}) },
        body: body !== undefined ? JSON.stringify(body) : undefined,
        cache: "no-store",
      });
    } catch (err) {
      if (signal?.aborted || err?.name === "AbortError") {
        throw new ApiError("Stopped.", { kind: "aborted" });
      }
      throw new ApiError(NODE_GONE, { kind: "network" });
    }
    if (response.status === 401 && attempt === 0 && (await onUnauthorized(path, { background }))) continue;
    if (!response.ok) throw await errorFromResponse(response, context);
    return response;
  }
}

async function readErrorBody(response) {
  try {
    const text = await response.text();
    try {
      return JSON.parse(text)?.error ?? { message: text };
    } catch {
      return { message: text };
    }
  } catch {
    return {};
  }
}

function retryAfterSeconds(value) {
  if (!value) return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, Math.ceil(seconds));
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, Math.ceil((date - Date.now()) / 1000));
}

async function errorFromResponse(response, context) {
  const error = await readErrorBody(response);
  const retryAfter = retryAfterSeconds(response.headers.get("Retry-After"));
  return new ApiError(describeError(response.status, error, { ...context, retryAfter }), {
    status: response.status,
    code: error.code ?? null,
    kind: response.status === 401 ? "auth" : "api",
    retryAfter,
  });
}

/**
 * OpenAI error `{message, type, param, code}` (+ HTTP status, 0 inside a stream) -> plain words.
 * context: {model, available: [model ids], retryAfter}
 */
export function describeError(status, error = {}, context = {}) {
  const code = error.code || "";
  const serverMessage = (error.message || "").trim();
  const wait = context.retryAfter ?? null;
  const inSeconds = wait != null ? ` in ${wait} s` : " in a moment";

  if (code === "model_not_found" || (status === 404 && error.param === "model")) {
    const model = context.model || "requested";
    let available = context.available?.length ? context.available.join(", ") : "";
    if (!available) {
      const listed = serverMessage.match(/Available models?:\s*(.*?)\.?$/i);
      available = listed ? listed[1] : "none";
    }
    return `Model "${model}" is not available in the swarm. Available: ${available}.`;
  }
  if (code === "model_loading") return `The model is still loading on this node, try again${inSeconds}.`;
  if (status === 503 || status === 429 || code === "queue_full" || code === "no_capacity") {
    return `The swarm is busy, try again${inSeconds}.`;
  }
  if (status === 401 || code === "invalid_api_key") {
    return "This node needs an API key. Set one with the key button at the top.";
  }
  if (status === 403) return "This API key is not allowed to do that.";
  if (code === "context_length_exceeded") {
    return "The conversation is too long for the model's context. Start a new chat or lower max tokens.";
  }
  if (status === 413 || code === "request_too_large") return "The message is too large for this node.";
  if (status === 502 || code === "peer_unreachable" || code === "peer_error") {
    return `The node that took the request stopped responding${serverMessage ? ` (${serverMessage})` : ""}.`;
  }
  if (status === 504 || code === "timeout") return "The answer took too long and was ended by the node.";
  if (status === 400 || status === 422) return `The node refused the request: ${serverMessage || "invalid request"}`;
  if (serverMessage) return status ? `Error ${status}: ${serverMessage}` : serverMessage;
  return status ? `The node answered with error ${status}.` : NODE_GONE;
}

export async function getJson(path, options = {}) {
  const response = await apiFetch(path, options);
  return response.json();
}
