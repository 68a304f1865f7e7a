// Stream decoding: a Server-Sent Events reader over fetch (EventSource cannot POST), and the
// OpenAI chat-completion chunks it carries turned into text, finish reason, usage, speed and the
// nodes that served a stream resumed after its node failed.

import { ApiError, NODE_GONE, describeError } from "./api.js";

/**
 * Reads a `text/event-stream` body and yields the `data` of each event (string), in order.
 * Handles CRLF/LF, multi-line data, comments (keep-alives) and a final event without a blank line.
 */
export async function* sseEvents(response, signal) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let data = [];
  let finished = false;
  const onAbort = () => reader.cancel().catch(() => {});
  signal?.addEventListener("abort", onAbort, { once: true });
  try {
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (err) {
        if (signal?.aborted) throw new ApiError("Stopped.", { kind: "aborted" });
        throw new ApiError(NODE_GONE, { kind: "network" });
      }
      if (signal?.aborted) throw new ApiError("Stopped.", { kind: "aborted" });
      if (chunk.done) {
        finished = true;
        break;
      }
      buffer += decoder.decode(chunk.value, { stream: true });
      let newline;
      while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
        if (newline === buffer.length - 1 && buffer.endsWith("\r")) break; // maybe half a CRLF
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + (buffer.startsWith("\r\n", newline) ? 2 : 1));
        if (line === "") {
          if (data.length) yield data.join("\n");
          data = [];
        } else if (line.startsWith("data:")) {
          data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
        } // other fields (event:, id:, retry:) and comments are not used by LlamaNet
      }
    }
    buffer += decoder.decode();
    if (buffer.startsWith("data:")) data.push(buffer.slice(buffer.startsWith("data: ") ? 6 : 5));
    if (data.length) yield data.join("\n");
  } finally {
    signal?.removeEventListener("abort", onAbort);
    if (!finished) reader.cancel().catch(() => {}); // the consumer left early: close the stream
  }
}

/**
 * Reads a streamed chat completion (`stream: true`, usage included at the end). `onText` gets the
 * whole text so far after each piece. Resolves to {text, finishReason, tokens, approximate,
 * tokensPerSecond, ttftMs, nodes}; `nodes` is every node that served the answer, in order, when
 * it took more than one (a gateway that resumed the stream on another node names them in the
 * finish chunk: `"llamanet": {"nodes": [...]}`), else null. An error event, or a stream cut
 * before `[DONE]` and any finish reason, throws ApiError. context: {startedAt
 * (performance.now() at the request), model, available} (the last two word errors).
 */
export async function readChatStream(response, onText, signal, context) {
  let text = "";
  let pieces = 0;
  let firstAt = null;
  let finishReason = null;
  let usage = null;
  let nodes = null;
  let done = false;
  for await (const data of sseEvents(response, signal)) {
    if (data === "[DONE]") {
      done = true;
      break;
    }
    let event;
    try {
      event = JSON.parse(data);
    } catch {
      continue;
    }
    if (event.error) {
      throw new ApiError(describeError(0, event.error, context), { code: event.error.code ?? null });
    }
    if (event.usage) usage = event.usage;
    const served = event.llamanet?.nodes;
    if (Array.isArray(served) && served.length > 1) nodes = served.map(String);
    const choice = event.choices?.[0];
    if (!choice) continue;
    const piece = choice.delta?.content;
    if (piece) {
      firstAt ??= performance.now();
      text += piece;
      pieces += 1;
      onText(text);
    }
    if (choice.finish_reason) finishReason = choice.finish_reason;
  }
  if (!done && !finishReason) throw new ApiError(NODE_GONE, { kind: "network" });
  const end = performance.now();
  const tokens = usage?.completion_tokens ?? pieces;
  const decodeSeconds = firstAt != null ? (end - firstAt) / 1000 : 0;
  return {
    text,
    finishReason,
    tokens,
    approximate: !usage,
    tokensPerSecond: tokens > 1 && decodeSeconds > 0 ? (tokens - 1) / decodeSeconds : null,
    ttftMs: firstAt != null ? firstAt - context.startedAt : null,
    nodes,
  };
}
