// LlamaNet web UI: chat with the swarm through this node, and watch the network.

import {
  ApiError, NODE_GONE, NODE_HEADER, apiFetch, describeError, getApiKey, getJson, setApiKey,
  setUnauthorizedHandler, sseEvents,
} from "./api.js";
import { escapeHtml, renderMarkdown } from "./markdown.js";
import { NetworkView } from "./network.js";

const $ = (selector) => document.querySelector(selector);
const CUSTOM = "__custom__";
const SWARM_ALIAS = "llamanet";
const SETTINGS_KEY = "llamanet.settings";
const THEME_KEY = "llamanet.theme";
const MODELS_REFRESH_MS = 10000;

const el = {
  layout: $("#layout"),
  messages: $("#messages"),
  empty: $("#empty-state"),
  composer: $("#composer"),
  prompt: $("#prompt"),
  send: $("#send"),
  stop: $("#stop"),
  model: $("#model"),
  modelCustom: $("#model-custom"),
  maxTokens: $("#max-tokens"),
  temperature: $("#temperature"),
  temperatureValue: $("#temperature-value"),
  stream: $("#stream-toggle"),
  newChat: $("#new-chat"),
  connectedDot: $("#connected-dot"),
  connectedLabel: $("#connected-label"),
  keyButton: $("#api-key-button"),
  keyDialog: $("#api-key-dialog"),
  keyInput: $("#api-key"),
  keyReason: $("#api-key-reason"),
  keyClear: $("#api-key-clear"),
  keyCancel: $("#api-key-cancel"),
  themeToggle: $("#theme-toggle"),
};

const state = {
  history: [], // the conversation sent with each request: [{role, content}]
  conversation: 0, // bumped by "New chat": late results of an older chat are not added
  busy: false,
  controller: null,
  models: [], // model cards from /v1/models: [{id, nodes, n_ctx}]
  selfId: null,
};

const short = (id) => String(id || "").slice(0, 12);

// ------------------------------------------------------------------ settings

function loadSettings() {
  try {
    return JSON.parse(localStorage.getItem(SETTINGS_KEY) || "{}");
  } catch {
    return {};
  }
}

function saveSettings() {
  const settings = {
    model: el.model.value,
    customModel: el.modelCustom.value,
    maxTokens: el.maxTokens.value,
    temperature: el.temperature.value,
    stream: el.stream.checked,
  };
  try {
    localStorage.setItem(SETTINGS_KEY, JSON.stringify(settings));
  } catch {
    /* storage disabled */
  }
}

function applySettings() {
  const s = loadSettings();
  if (s.maxTokens) el.maxTokens.value = s.maxTokens;
  if (s.temperature) el.temperature.value = s.temperature;
  if (typeof s.stream === "boolean") el.stream.checked = s.stream;
  if (s.customModel) el.modelCustom.value = s.customModel;
  if (s.model) ensureModelOption(s.model);
  el.temperatureValue.textContent = Number(el.temperature.value).toFixed(2);
  syncCustomModel();
}

function currentModel() {
  if (el.model.value === CUSTOM) return el.modelCustom.value.trim() || SWARM_ALIAS;
  return el.model.value || SWARM_ALIAS;
}

function syncCustomModel() {
  el.modelCustom.hidden = el.model.value !== CUSTOM;
}

// ------------------------------------------------------------------ theme

function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
}

function initTheme() {
  let theme = null;
  try {
    theme = localStorage.getItem(THEME_KEY);
  } catch { /* ignore */ }
  if (!theme) theme = matchMedia("(prefers-color-scheme: light)").matches ? "light" : "dark";
  applyTheme(theme);
  el.themeToggle.addEventListener("click", () => {
    const next = document.documentElement.dataset.theme === "light" ? "dark" : "light";
    applyTheme(next);
    try {
      localStorage.setItem(THEME_KEY, next);
    } catch { /* ignore */ }
  });
}

// ------------------------------------------------------------------ models

function modelOption(value, label) {
  const option = document.createElement("option");
  option.value = value;
  option.textContent = label;
  return option;
}

// Keeps a previously chosen model selectable even before the swarm lists it.
function ensureModelOption(value) {
  if (![...el.model.options].some((o) => o.value === value)) {
    el.model.insertBefore(modelOption(value, `${value} (not seen)`), el.model.querySelector(`option[value="${CUSTOM}"]`));
  }
  el.model.value = value;
}

function renderModels() {
  const selected = el.model.value || loadSettings().model || SWARM_ALIAS;
  el.model.replaceChildren(modelOption(SWARM_ALIAS, `${SWARM_ALIAS} — any model`));
  for (const card of state.models) {
    const nodes = card.nodes ?? 1;
    el.model.append(modelOption(card.id, `${card.id} — ${nodes} node${nodes === 1 ? "" : "s"}`));
  }
  el.model.append(modelOption(CUSTOM, "Custom model id…"));
  ensureModelOption(selected);
  syncCustomModel();
}

async function refreshModels() {
  try {
    const list = await getJson("/v1/models", { background: true });
    const next = (list.data || []).map((m) => ({ id: m.id, nodes: m.nodes, n_ctx: m.n_ctx }));
    if (JSON.stringify(next) !== JSON.stringify(state.models)) {
      state.models = next;
      renderModels();
    }
  } catch {
    /* the network view shows connection problems */
  }
}

// ------------------------------------------------------------------ messages

function hideEmptyState() {
  el.empty.hidden = true;
}

function nearBottom() {
  const m = el.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
}

function scrollToBottom(force = false) {
  if (force || nearBottom()) el.messages.scrollTop = el.messages.scrollHeight;
}

function addUserMessage(text) {
  hideEmptyState();
  const node = document.createElement("div");
  node.className = "message user";
  node.dataset.testid = "user-message";
  const body = document.createElement("div");
  body.className = "content";
  body.textContent = text; // user text is shown as typed, never as HTML
  node.append(body);
  el.messages.append(node);
  scrollToBottom(true);
  return node;
}

function addError(message, { retry } = {}) {
  hideEmptyState();
  const node = document.createElement("div");
  node.className = "message error";
  node.setAttribute("role", "alert");
  node.dataset.testid = "error";
  const text = document.createElement("span");
  text.className = "error-text";
  text.textContent = message;
  node.append(text);
  if (retry) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "ghost retry";
    button.textContent = "Retry";
    button.addEventListener("click", () => {
      if (state.busy) return;
      node.remove();
      retry();
    });
    node.append(button);
  }
  el.messages.append(node);
  scrollToBottom(true);
  return node;
}

/** One assistant answer: text rendered as markdown (throttled while streaming) + a meta line. */
class AnswerView {
  constructor() {
    hideEmptyState();
    this.text = "";
    this.root = document.createElement("div");
    this.root.className = "message assistant pending";
    this.root.dataset.testid = "assistant-message";
    this.content = document.createElement("div");
    this.content.className = "content markdown";
    this.meta = document.createElement("div");
    this.meta.className = "meta";
    this.root.append(this.content, this.meta);
    el.messages.append(this.root);
    this.renderPending = false;
    scrollToBottom(true);
  }

  setText(text) {
    this.text = text;
    this.root.classList.remove("pending");
    this.root.classList.add("streaming");
    if (this.renderPending) return;
    this.renderPending = true;
    const run = () => {
      if (!this.renderPending) return;
      this.renderPending = false;
      this.render();
    };
    requestAnimationFrame(run);
    setTimeout(run, 100); // rAF does not fire in background tabs
  }

  render() {
    const stick = nearBottom();
    this.content.innerHTML = renderMarkdown(this.text);
    if (stick) scrollToBottom(true);
  }

  setNode(nodeId) {
    if (!nodeId) return;
    this.nodeId = nodeId;
    this.root.dataset.nodeId = nodeId;
  }

  /** info: {tokens, approximate, tokensPerSecond, ttftMs, finishReason, stopped} */
  finish(info = {}) {
    this.renderPending = false;
    this.render();
    this.root.classList.remove("pending", "streaming");
    if (info.stopped) this.root.classList.add("stopped");
    const parts = [];
    if (this.nodeId) {
      // the id comes from a response header: escape it like any other outside text
      const id = escapeHtml(this.nodeId);
      const self = this.nodeId === state.selfId;
      parts.push(`<span class="served-by" data-testid="served-by" data-node-id="${id}" title="Served by node ${
        id}">node <b class="mono">${escapeHtml(short(this.nodeId))}</b>${self ? " (this node)" : " (peer)"}</span>`);
    }
    if (info.tokens != null) {
      parts.push(`<span class="tokens">${info.approximate ? "~" : ""}${info.tokens} token${info.tokens === 1 ? "" : "s"}</span>`);
    }
    if (info.tokensPerSecond) {
      parts.push(`<span class="tps" title="${info.ttftMs != null ? "generation speed after the first token" : "including prompt processing"}">${info.tokensPerSecond.toFixed(1)} tok/s</span>`);
    }
    if (info.ttftMs != null) parts.push(`<span class="ttft">first token ${Math.round(info.ttftMs)} ms</span>`);
    if (info.stopped) parts.push('<span class="finish stopped">stopped</span>');
    else if (info.finishReason === "length") parts.push('<span class="finish" title="max tokens reached">cut at max tokens</span>');
    this.meta.innerHTML = parts.join('<span class="sep">·</span>');
    if (!this.text && !info.stopped) this.content.innerHTML = '<p class="muted">(empty answer)</p>';
    if (info.finishReason) this.root.dataset.finishReason = info.finishReason;
    this.root.dataset.done = "true";
    scrollToBottom();
  }

  remove() {
    this.root.remove();
  }
}

// ------------------------------------------------------------------ sending

function setBusy(busy) {
  state.busy = busy;
  el.send.disabled = busy;
  el.stop.hidden = !busy;
  el.composer.classList.toggle("busy", busy);
  document.body.dataset.busy = String(busy);
}

function requestBody(stream) {
  const maxTokens = Number.parseInt(el.maxTokens.value, 10);
  const temperature = Number.parseFloat(el.temperature.value);
  const body = { model: currentModel(), messages: state.history.slice(), stream };
  if (Number.isFinite(maxTokens) && maxTokens > 0) body.max_tokens = maxTokens;
  if (Number.isFinite(temperature)) body.temperature = temperature;
  if (stream) body.stream_options = { include_usage: true };
  return body;
}

async function readStream(response, view, signal, context) {
  let text = "";
  let pieces = 0;
  let firstAt = null;
  let finishReason = null;
  let usage = null;
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
    const choice = event.choices?.[0];
    if (!choice) continue;
    const piece = choice.delta?.content;
    if (piece) {
      firstAt ??= performance.now();
      text += piece;
      pieces += 1;
      view.setText(text);
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
  };
}

async function readJson(response, view, context) {
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

async function send(text) {
  if (state.busy || !text.trim()) return;
  const conversation = state.conversation;
  const remember = (role, content) => {
    if (state.conversation === conversation) state.history.push({ role, content });
  };
  const forget = (index) => {
    if (state.conversation === conversation) state.history.splice(index, 1);
  };
  const userNode = addUserMessage(text);
  state.history.push({ role: "user", content: text });
  const turn = state.history.length - 1;
  const stream = el.stream.checked;
  const body = requestBody(stream);
  const view = new AnswerView();
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  const context = {
    model: body.model,
    available: state.models.map((m) => m.id),
    startedAt: performance.now(),
  };
  try {
    const response = await apiFetch("/v1/chat/completions", {
      method: "POST", body, signal: controller.signal, context,
    });
    view.setNode(response.headers.get(NODE_HEADER));
    const result = stream
      ? await readStream(response, view, controller.signal, context)
      : await readJson(response, view, context);
    view.finish(result);
    remember("assistant", result.text);
    if (view.nodeId) network.flash(view.nodeId);
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
      addError(error.message);
    } else {
      view.remove();
      forget(turn); // the question was not answered: retrying sends it again
      userNode.classList.add("unanswered");
      addError(error.message, {
        retry: () => {
          userNode.remove();
          send(text);
        },
      });
      if (error.code === "model_not_found") refreshModels();
    }
  } finally {
    if (state.controller === controller) state.controller = null;
    setBusy(false);
  }
}

function stop() {
  state.controller?.abort();
}

// ------------------------------------------------------------------ API key

let keyPrompt = null; // one dialog at a time
let keyDeclined = false;

function askForKey(reason) {
  if (keyPrompt) return keyPrompt;
  el.keyReason.textContent = reason;
  el.keyInput.value = getApiKey();
  keyPrompt = new Promise((resolve) => {
    el.keyDialog.addEventListener("close", () => {
      keyPrompt = null;
      if (el.keyDialog.returnValue === "save" && el.keyInput.value.trim()) {
        setApiKey(el.keyInput.value.trim());
        keyDeclined = false;
        resolve(true);
      } else {
        keyDeclined = true;
        resolve(false);
      }
    }, { once: true });
  });
  el.keyDialog.returnValue = "";
  el.keyDialog.showModal();
  el.keyInput.focus();
  return keyPrompt;
}

setUnauthorizedHandler(async (_path, { background }) => {
  if (background && keyDeclined) return false;
  const had = getApiKey();
  return askForKey(had
    ? "The node refused the saved API key. Enter a valid key; it is kept in this browser only."
    : "This node asks for an API key. It is kept in this browser only and sent as "
      + "Authorization: Bearer <key>.");
});

// ------------------------------------------------------------------ wiring

const network = new NetworkView(
  { list: $("#nodes"), summary: $("#network-summary"), error: $("#network-error") },
  {
    onStatus(ok) {
      el.connectedDot.classList.toggle("ok", ok);
      el.connectedDot.classList.toggle("down", !ok);
      if (!ok) el.connectedLabel.textContent = "node unreachable";
      else if (state.selfId) el.connectedLabel.textContent = `node ${short(state.selfId)}`;
      if (ok && !state.selfId) loadInfo();
    },
  },
);

async function loadInfo() {
  try {
    const info = await getJson("/info", { background: true });
    state.selfId = info.node_id;
    el.connectedLabel.textContent = `node ${short(info.node_id)}`;
    el.connectedLabel.parentElement.title = `Connected to node ${info.node_id} (${info.url}), v${info.version}`;
    el.connectedLabel.parentElement.dataset.nodeId = info.node_id;
    network.setSelf(info.node_id);
  } catch {
    /* retried on the next successful poll */
  }
}

function autosize() {
  el.prompt.style.height = "auto";
  el.prompt.style.height = `${Math.min(el.prompt.scrollHeight, 240)}px`;
}

function submitPrompt() {
  const text = el.prompt.value;
  if (state.busy || !text.trim()) return;
  el.prompt.value = "";
  autosize();
  send(text);
}

function initTabs() {
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => {
      el.layout.dataset.view = tab.dataset.view;
      for (const t of document.querySelectorAll(".tab")) {
        t.setAttribute("aria-selected", String(t === tab));
      }
    });
  }
}

function init() {
  initTheme();
  initTabs();
  renderModels();
  applySettings();

  el.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    submitPrompt();
  });
  el.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submitPrompt();
    }
  });
  el.prompt.addEventListener("input", autosize);
  el.stop.addEventListener("click", stop);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.busy && !el.keyDialog.open) stop();
  });

  el.model.addEventListener("change", () => {
    syncCustomModel();
    if (el.model.value === CUSTOM) el.modelCustom.focus();
    saveSettings();
  });
  el.modelCustom.addEventListener("input", saveSettings);
  el.maxTokens.addEventListener("change", saveSettings);
  el.temperature.addEventListener("input", () => {
    el.temperatureValue.textContent = Number(el.temperature.value).toFixed(2);
    saveSettings();
  });
  el.stream.addEventListener("change", saveSettings);

  el.newChat.addEventListener("click", () => {
    stop();
    state.conversation += 1;
    state.history = [];
    for (const node of el.messages.querySelectorAll(".message")) node.remove();
    el.empty.hidden = false;
    el.prompt.focus();
  });

  el.keyButton.addEventListener("click", () => {
    askForKey("The API key is kept in this browser only and sent as Authorization: Bearer <key>.")
      .then((saved) => {
        if (saved) {
          network.refresh();
          refreshModels();
        }
      });
  });
  el.keyCancel.addEventListener("click", () => el.keyDialog.close("cancel"));
  el.keyClear.addEventListener("click", () => {
    setApiKey("");
    el.keyInput.value = "";
    el.keyDialog.close("cancel");
  });

  setBusy(false);
  loadInfo();
  refreshModels();
  setInterval(refreshModels, MODELS_REFRESH_MS);
  network.start();
  el.prompt.focus();
  document.body.dataset.ready = "true";
}

init();
