// The network view: the live nodes this node knows (`GET /nodes`), polled every few seconds.

import { getJson } from "./api.js";
import { escapeHtml } from "./markdown.js";

const POLL_MS = 2000;

function short(id) {
  return String(id || "").slice(0, 12);
}

function formatDuration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "–";
  if (seconds < 60) return `${Math.floor(seconds)}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h ${Math.floor((seconds % 3600) / 60)}m`;
  return `${Math.floor(seconds / 86400)}d ${Math.floor((seconds % 86400) / 3600)}h`;
}

function formatCtx(n) {
  if (!n) return "";
  return n >= 1024 && n % 1024 === 0 ? `${n / 1024}k ctx` : `${n} ctx`;
}

function safeHref(url) {
  return /^https?:\/\//i.test(url || "") ? url : null;
}

function nodeCard(record, selfId) {
  const id = String(record.node_id || "");
  const isSelf = id === selfId;
  const capacity = Math.max(0, record.capacity || 0);
  const load = Math.min(1, Math.max(0, Number(record.load) || 0));
  const loadPct = Math.round(load * 100);
  const level = load >= 0.85 ? "high" : load >= 0.5 ? "mid" : "low";
  const tps = Number(record.tokens_per_second) || 0;
  const ttft = Number(record.ttft_ms) || 0;
  const href = safeHref(record.url);
  const url = escapeHtml(record.url || "");
  const models = (record.models || []).map((m) => {
    const details = [m.quantization, formatCtx(m.n_ctx)].filter(Boolean).join(" · ");
    return `<span class="chip model" data-model-id="${escapeHtml(m.id)}">${escapeHtml(m.id)}${
      details ? ` <small>${escapeHtml(details)}</small>` : ""}</span>`;
  }).join("") || '<span class="muted">no model (router only)</span>';
  const uptime = record.started_at ? formatDuration(Date.now() / 1000 - record.started_at) : "–";

  return `
    <header>
      <span class="node-id mono" title="${escapeHtml(id)}">${escapeHtml(short(id))}</span>
      ${isSelf ? '<span class="badge self-badge">this node</span>' : ""}
      ${record.active > 0 ? '<span class="badge busy-badge">generating</span>' : ""}
      <span class="version">v${escapeHtml(record.version || "?")}</span>
    </header>
    ${href ? `<a class="node-url mono" href="${url}" target="_blank" rel="noopener">${url}</a>`
           : `<span class="node-url mono">${url}</span>`}
    <div class="models">${models}</div>
    <div class="load" title="${record.active || 0} running + ${record.queued || 0} queued of ${capacity}">
      <div class="bar ${level}"><span style="width:${loadPct}%"></span></div>
      <span class="load-label">${loadPct}% load</span>
    </div>
    <dl class="stats">
      <div><dt>active</dt><dd class="active">${record.active || 0}</dd></div>
      <div><dt>queued</dt><dd class="queued">${record.queued || 0}</dd></div>
      <div><dt>tok/s</dt><dd class="tps">${tps ? tps.toFixed(1) : "–"}</dd></div>
      <div><dt>first token</dt><dd>${ttft ? `${Math.round(ttft)} ms` : "–"}</dd></div>
      <div><dt>up</dt><dd>${uptime}</dd></div>
    </dl>`;
}

export class NetworkView {
  /**
   * @param {object} els {list, summary, error}
   * @param {object} hooks {onStatus(ok), onNodes(records)}
   */
  constructor(els, hooks = {}) {
    this.els = els;
    this.hooks = hooks;
    this.selfId = null;
    this.cards = new Map(); // node_id -> element
    this.timer = null;
    this.records = [];
  }

  setSelf(nodeId) {
    this.selfId = nodeId;
    this.render(this.records);
  }

  start() {
    const tick = async () => {
      await this.refresh();
      this.timer = setTimeout(tick, POLL_MS);
    };
    tick();
  }

  async refresh() {
    try {
      const data = await getJson("/nodes", { background: true });
      this.records = (data.nodes || []).filter((r) => !r.withdrawn);
      this.els.error.hidden = true;
      this.els.list.classList.remove("stale");
      this.render(this.records);
      this.hooks.onStatus?.(true);
      this.hooks.onNodes?.(this.records);
    } catch (err) {
      this.els.error.textContent = `Cannot refresh the node list: ${err.message}`;
      this.els.error.hidden = false;
      this.els.list.classList.add("stale");
      this.hooks.onStatus?.(false, err);
    }
  }

  render(records) {
    const sorted = [...records].sort((a, b) =>
      (b.node_id === this.selfId) - (a.node_id === this.selfId) || a.node_id.localeCompare(b.node_id));
    const seen = new Set();
    let previous = null;
    for (const record of sorted) {
      const id = String(record.node_id);
      seen.add(id);
      let card = this.cards.get(id);
      if (!card) {
        card = document.createElement("article");
        card.className = "node";
        card.dataset.nodeId = id;
        card.dataset.testid = "node";
        this.cards.set(id, card);
      }
      const html = nodeCard(record, this.selfId);
      if (card._html !== html) {
        card.innerHTML = html;
        card._html = html;
      }
      card.classList.toggle("self", id === this.selfId);
      card.classList.toggle("busy", record.active > 0);
      // keep DOM order = sorted order without re-inserting cards that are already in place
      const expected = previous ? previous.nextElementSibling : this.els.list.firstElementChild;
      if (expected !== card) this.els.list.insertBefore(card, expected);
      previous = card;
    }
    for (const [id, card] of this.cards) {
      if (!seen.has(id)) {
        card.remove();
        this.cards.delete(id);
      }
    }
    const models = new Set(records.flatMap((r) => (r.models || []).map((m) => m.id)));
    const n = records.length;
    this.els.summary.textContent = n
      ? `${n} node${n === 1 ? "" : "s"} · ${models.size} model${models.size === 1 ? "" : "s"}`
      : "no nodes found yet";
  }

  /** Briefly highlights the card of the node that just served an answer. */
  flash(nodeId) {
    const card = this.cards.get(nodeId);
    if (!card) return;
    card.classList.remove("flash");
    void card.offsetWidth; // restart the animation
    card.classList.add("flash");
  }
}
