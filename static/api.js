// The service as the page uses it: /api/chat as Server-Sent Events over fetch, /api/upload,
// /v1/models, each with the access token when one is kept. A 401 asks for the token (through
// the page's askToken) and tries again with it; nothing is retried without a new token.

const TOKEN_KEY = "chatbridge.token";

export class ApiError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

export function storedToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

function keepToken(token) {
  try {
    localStorage.setItem(TOKEN_KEY, token);
  } catch {
    // storage disabled: the token lasts until the page closes
  }
}

let memoryToken = storedToken();

/**
 * fetch() with the access token. On a 401, askToken(rejected) may return a new token (then
 * the request is sent again) or null (then the 401 response is returned as it is).
 */
export async function authorizedFetch(url, init = {}, askToken = null) {
  for (;;) {
    const headers = new Headers(init.headers || {});
    if (memoryToken) headers.set("Authorization", `Bearer ${memoryToken}`);
    const response = await fetch(url, { ...init, headers });
    if (response.status !== 401 || !askToken) return response;
    const token = await askToken(Boolean(memoryToken));
    if (!token) return response;
    memoryToken = token;
    keepToken(token);
  }
}

export function setToken(token) {
  memoryToken = token;
  keepToken(token);
}

// The JSON error a non-2xx response carries, else its status line.
async function failure(response, what) {
  let message = "";
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") message = body.error;
    else if (body && body.error && typeof body.error.message === "string") message = body.error.message;
  } catch {
    // not JSON: the status line says enough
  }
  return new ApiError(message || `${what} failed: HTTP ${response.status} ${response.statusText}`.trim(),
    response.status);
}

/** Upload one file; resolves with the file_data to send with a message, and its file_id. */
export async function uploadFile(file, { signal, askToken } = {}) {
  const form = new FormData();
  form.append("file", file);
  const response = await authorizedFetch("/api/upload", { method: "POST", body: form, signal },
    askToken);
  if (!response.ok) throw await failure(response, "Upload");
  const body = await response.json();
  if (!body.success || !body.file_data) throw new ApiError(body.error || "Upload failed");
  return { fileData: body.file_data, fileId: body.file_id || "" };
}

/** The model ids the service offers, or [] when it cannot say. */
export async function listModels({ askToken } = {}) {
  try {
    const response = await authorizedFetch("/v1/models", { headers: { Accept: "application/json" } },
      askToken);
    if (!response.ok) return [];
    const body = await response.json();
    return Array.isArray(body.data)
      ? body.data.map((model) => model && model.id).filter((id) => typeof id === "string" && id)
      : [];
  } catch {
    return [];
  }
}

/**
 * Send one chat request and stream its answer: onDelta({text}|{reasoning}) per event.
 * Resolves when the stream ends with {done: true}; rejects with an ApiError for an error
 * status, an error event or a stream cut short, and with an AbortError when signal aborts.
 */
export async function streamChat(body, { signal, askToken, onDelta }) {
  const response = await authorizedFetch("/api/chat", {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
    body: JSON.stringify(body),
    signal,
  }, askToken);
  if (!response.ok) throw await failure(response, "Chat");
  const reader = response.body.getReader();
  try {
    for await (const event of sseEvents(reader)) {
      if (event.done) return;
      if ("error" in event) throw new ApiError(String(event.error || "the upstream failed"));
      onDelta(event);
    }
  } finally {
    reader.cancel().catch(() => {});
  }
  throw new ApiError("The connection closed before the answer finished.");
}

/**
 * The JSON data of each event in an SSE byte stream. Lines end with CRLF, LF or CR, even when
 * a CRLF is split between two reads; comment lines (": ping") and non-JSON data are skipped.
 */
export async function* sseEvents(reader) {
  const decoder = new TextDecoder();
  let buffer = "";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.search(/[\r\n]/)) !== -1) {
      if (buffer[end] === "\r" && end === buffer.length - 1 && !done) break; // an LF may follow
      const line = buffer.slice(0, end);
      buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 2 : 1));
      if (line === "") {
        const event = parseData(data);
        data = [];
        if (event) yield event;
      } else if (line.startsWith("data:")) {
        data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
      }
    }
    if (done) return; // an event without its blank line is dropped, as the SSE spec says
  }
}

function parseData(data) {
  if (!data.length) return null;
  try {
    const event = JSON.parse(data.join("\n"));
    return event && typeof event === "object" ? event : null;
  } catch {
    return null;
  }
}
