// The chat: the conversation sent with each request, sending (streamed or not), stopping, and
// what the user sees when a request fails part-way or before any answer.

import { ApiError, NODE_GONE, NODE_HEADER, apiFetch, describeError } from "./api.js";
import { MessageList } from "./messages.js";
import { ChatSettings } from "./settings.js";
import { readChatStream } from "./stream.js";

async function readChatResponse(response, view, context) {
  let data;
  try {
    data = await response.json();
  } catch {
    throw new ApiError(NODE_GONE, { kind: "network" });
  }
  if (data.error) throw new ApiError(describeError(response.status, data.error, context));
  const choice = data.choices?.[0] ?? {};
  const text = choice.message?.content ?? "";
  view.setText(text);
  const tokens = data.usage?.completion_tokens ?? null;
  const seconds = (performance.now() - context.startedAt) / 1000;
  return {
    text,
    finishReason: choice.finish_reason ?? null,
    tokens,
    tokensPerSecond: tokens && seconds > 0 ? tokens / seconds : null,
  };
}

export class Chat {
  /**
   * @param {object} els the composer (composer, prompt, send, stop, newChat), the message list
   *   (messages, empty) and the settings bar (see ChatSettings)
   * @param {object} hooks {selfId() (the node serving this page, or null), onServed(nodeId)}
   */
  constructor(els, hooks = {}) {
    this.el = els;
    this.hooks = hooks;
    this.history = []; // the conversation sent with each request: [{role, content}]
    this.conversation = 0; // bumped by "New chat": late results of an older chat are not added
    this.busy = false;
    this.controller = null;
    this.settings = new ChatSettings(els);
    this.messages = new MessageList(els, {
      isBusy: () => this.busy,
      selfId: () => hooks.selfId?.() ?? null,
    });
  }

  init() {
    const el = this.el;
    this.settings.init();
    el.composer.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submitPrompt();
    });
    el.prompt.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.submitPrompt();
      }
    });
    el.prompt.addEventListener("input", () => this.autosize());
    el.stop.addEventListener("click", () => this.stop());
    el.newChat.addEventListener("click", () => {
      this.stop();
      this.conversation += 1;
      this.history = [];
      this.messages.clear();
      el.prompt.focus();
    });
    this.setBusy(false);
  }

  stop() {
    this.controller?.abort();
  }

  autosize() {
    const prompt = this.el.prompt;
    prompt.style.height = "auto";
    prompt.style.height = `${Math.min(prompt.scrollHeight, 240)}px`;
  }

  submitPrompt() {
    const text = this.el.prompt.value;
    if (this.busy || !text.trim()) return;
    this.el.prompt.value = "";
    this.autosize();
    this.send(text);
  }

  setBusy(busy) {
    const el = this.el;
    this.busy = busy;
    el.send.disabled = busy;
    el.stop.hidden = !busy;
    el.composer.classList.toggle("busy", busy);
    document.body.dataset.busy = String(busy);
  }

  requestBody(stream) {
    const maxTokens = this.settings.maxTokens();
    const temperature = this.settings.temperature();
    const body = { model: this.settings.model(), messages: this.history.slice(), stream };
    if (Number.isFinite(maxTokens) && maxTokens > 0) body.max_tokens = maxTokens;
    if (Number.isFinite(temperature)) body.temperature = temperature;
    if (stream) body.stream_options = { include_usage: true };
    return body;
  }

  async send(text) {
    if (this.busy || !text.trim()) return;
    const conversation = this.conversation;
    const remember = (role, content) => {
      if (this.conversation === conversation) this.history.push({ role, content });
    };
    const forget = (index) => {
      if (this.conversation === conversation) this.history.splice(index, 1);
    };
    const userNode = this.messages.addUser(text);
    this.history.push({ role: "user", content: text });
    const turn = this.history.length - 1;
    const stream = this.settings.stream();
    const body = this.requestBody(stream);
    const view = this.messages.addAnswer();
    const controller = new AbortController();
    this.controller = controller;
    this.setBusy(true);
    const context = {
      model: body.model,
      available: this.settings.modelIds(),
      startedAt: performance.now(),
    };
    try {
      const response = await apiFetch("/v1/chat/completions", {
        method: "POST", body, signal: controller.signal, context,
      });
      view.setNode(response.headers.get(NODE_HEADER));
      const result = stream
        ? await readChatStream(response, (soFar) => view.setText(soFar), controller.signal, context)
        : await readChatResponse(response, view, context);
      view.finish(result);
      remember("assistant", result.text);
      const finishedOn = result.nodes?.at(-1) ?? view.nodeId; // resumed: the node that ended it
      if (finishedOn) this.hooks.onServed?.(finishedOn);
    } catch (err) {
      const error = err instanceof ApiError ? err : new ApiError(NODE_GONE, { kind: "network" });
      if (error.kind === "aborted") {
        view.finish({ stopped: true, tokens: view.text ? undefined : 0 });
        if (view.text) remember("assistant", view.text);
        else forget(turn);
      } else if (view.text) {
        // part of an answer arrived: keep it, and say why it ends there
        view.finish({ stopped: true });
        view.root.classList.add("interrupted");
        remember("assistant", view.text);
        this.messages.addError(error.message);
      } else {
        view.remove();
        forget(turn); // the question was not answered: retrying sends it again
        userNode.classList.add("unanswered");
        this.messages.addError(error.message, {
          retry: () => {
            userNode.remove();
            this.send(text);
          },
        });
        if (error.code === "model_not_found") this.settings.refreshModels();
      }
    } finally {
      if (this.controller === controller) this.controller = null;
      this.setBusy(false);
    }
  }
}
