// The conversation as shown: user messages (plain text), errors with a retry button, and
// assistant answers rendered as markdown while they stream, each with the node that served it
// (and the nodes it was continued on, when its node failed mid-answer).

import { escapeHtml, renderMarkdown } from "./markdown.js";

const short = (id) => String(id || "").slice(0, 12);

export class MessageList {
  /**
   * @param {object} els {messages (the scrolling list), empty (the empty-state block)}
   * @param {object} hooks {isBusy() (a retry waits for the running request), selfId() (the
   *   node serving this page, or null)}
   */
  constructor(els, hooks) {
    this.els = els;
    this.hooks = hooks;
  }

  hideEmptyState() {
    this.els.empty.hidden = true;
  }

  /** Removes every message and shows the empty state again. */
  clear() {
    for (const node of this.els.messages.querySelectorAll(".message")) node.remove();
    this.els.empty.hidden = false;
  }

  nearBottom() {
    const m = this.els.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
  }

  scrollToBottom(force = false) {
    if (force || this.nearBottom()) this.els.messages.scrollTop = this.els.messages.scrollHeight;
  }

  addUser(text) {
    this.hideEmptyState();
    const node = document.createElement("div");
    node.className = "message user";
    node.dataset.testid = "user-message";
    const body = document.createElement("div");
    body.className = "content";
    body.textContent = text; // user text is shown as typed, never as HTML
    node.append(body);
    this.els.messages.append(node);
    this.scrollToBottom(true);
    return node;
  }

  addError(message, { retry } = {}) {
    this.hideEmptyState();
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
        if (this.hooks.isBusy()) return;
        node.remove();
        retry();
      });
      node.append(button);
    }
    this.els.messages.append(node);
    this.scrollToBottom(true);
    return node;
  }

  addAnswer() {
    return new AnswerView(this);
  }
}

/** One assistant answer: text rendered as markdown (throttled while streaming) + a meta line. */
class AnswerView {
  constructor(list) {
    list.hideEmptyState();
    this.list = list;
    this.text = "";
    this.root = document.createElement("div");
    this.root.className = "message assistant pending";
    this.root.dataset.testid = "assistant-message";
    this.content = document.createElement("div");
    this.content.className = "content markdown";
    this.meta = document.createElement("div");
    this.meta.className = "meta";
    this.root.append(this.content, this.meta);
    list.els.messages.append(this.root);
    this.renderPending = false;
    list.scrollToBottom(true);
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
    const stick = this.list.nearBottom();
    this.content.innerHTML = renderMarkdown(this.text);
    if (stick) this.list.scrollToBottom(true);
  }

  setNode(nodeId) {
    if (!nodeId) return;
    this.nodeId = nodeId;
    this.root.dataset.nodeId = nodeId;
  }

  /**
   * info: {tokens, approximate, tokensPerSecond, ttftMs, finishReason, stopped, nodes}; `nodes`:
   * every node that served a resumed stream, in order (the first is the one in the header).
   */
  finish(info = {}) {
    this.renderPending = false;
    this.render();
    this.root.classList.remove("pending", "streaming");
    if (info.stopped) this.root.classList.add("stopped");
    const served = Array.isArray(info.nodes) ? info.nodes : [];
    if (!this.nodeId && served.length) this.setNode(served[0]);
    const parts = [];
    if (this.nodeId) {
      // the id comes from a response header: escape it like any other outside text
      const id = escapeHtml(this.nodeId);
      const self = this.nodeId === this.list.hooks.selfId();
      parts.push(`<span class="served-by" data-testid="served-by" data-node-id="${id}" title="Served by node ${
        id}">node <b class="mono">${escapeHtml(short(this.nodeId))}</b>${self ? " (this node)" : " (peer)"}</span>`);
    }
    const later = served.slice(1);
    if (later.length) {
      // its node stopped responding part-way: the answer was resumed on another node (or more)
      const ids = later.map((nodeId) => escapeHtml(nodeId));
      const names = later.map((nodeId) => `node <b class="mono">${escapeHtml(short(nodeId))}</b>`);
      parts.push(`<span class="continued" data-testid="continued-on" data-node-ids="${ids.join(" ")}" title="Its node stopped responding; continued on node ${
        ids.join(", then on node ")}">continued on ${names.join(", then on ")}</span>`);
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
    this.list.scrollToBottom();
  }

  remove() {
    this.root.remove();
  }
}
