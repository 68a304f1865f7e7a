// The chat's settings bar: the model picker (fed by the swarm's /v1/models), max tokens,
// temperature and streaming, kept in localStorage between visits.

import { getJson } from "./api.js";

export const SWARM_ALIAS = "llamanet";
const CUSTOM = "__custom__";
const SETTINGS_KEY = "llamanet.settings";
const MODELS_REFRESH_MS = 10000;

function loadSettings() {
  try {
    return JSON.parse(localStorage.getItem(SETTINGS_KEY) || "{}");
  } catch {
    return {};
  }
}

function modelOption(value, label) {
  const option = document.createElement("option");
  option.value = value;
  option.textContent = label;
  return option;
}

export class ChatSettings {
  /** @param {object} els {model, modelCustom, maxTokens, temperature, temperatureValue, stream} */
  constructor(els) {
    this.el = els;
    this.models = []; // model cards from /v1/models: [{id, nodes, n_ctx}]
  }

  /** Shows the saved settings and keeps them saved on every change. */
  init() {
    const el = this.el;
    this.renderModels();
    this.apply(loadSettings());
    el.model.addEventListener("change", () => {
      this.syncCustomModel();
      if (el.model.value === CUSTOM) el.modelCustom.focus();
      this.save();
    });
    el.modelCustom.addEventListener("input", () => this.save());
    el.maxTokens.addEventListener("change", () => this.save());
    el.temperature.addEventListener("input", () => {
      el.temperatureValue.textContent = Number(el.temperature.value).toFixed(2);
      this.save();
    });
    el.stream.addEventListener("change", () => this.save());
  }

  /** Polls the swarm's model list (the first time at once). */
  startRefresh() {
    this.refreshModels();
    setInterval(() => this.refreshModels(), MODELS_REFRESH_MS);
  }

  // ---------------------------------------------------------------- what a request uses

  model() {
    const el = this.el;
    if (el.model.value === CUSTOM) return el.modelCustom.value.trim() || SWARM_ALIAS;
    return el.model.value || SWARM_ALIAS;
  }

  maxTokens() {
    return Number.parseInt(this.el.maxTokens.value, 10);
  }

  temperature() {
    return Number.parseFloat(this.el.temperature.value);
  }

  stream() {
    return this.el.stream.checked;
  }

  /** The model ids the swarm lists (for error messages). */
  modelIds() {
    return this.models.map((m) => m.id);
  }

  // ---------------------------------------------------------------- persistence

  save() {
    const el = this.el;
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

  apply(s) {
    const el = this.el;
    if (s.maxTokens) el.maxTokens.value = s.maxTokens;
    if (s.temperature) el.temperature.value = s.temperature;
    if (typeof s.stream === "boolean") el.stream.checked = s.stream;
    if (s.customModel) el.modelCustom.value = s.customModel;
    if (s.model) this.ensureModelOption(s.model);
    el.temperatureValue.textContent = Number(el.temperature.value).toFixed(2);
    this.syncCustomModel();
  }

  syncCustomModel() {
    this.el.modelCustom.hidden = this.el.model.value !== CUSTOM;
  }

  // ---------------------------------------------------------------- the model picker

  // Keeps a previously chosen model selectable even before the swarm lists it.
  ensureModelOption(value) {
    const select = this.el.model;
    if (![...select.options].some((o) => o.value === value)) {
      select.insertBefore(modelOption(value, `${value} (not seen)`), select.querySelector(`option[value="${CUSTOM}"]`));
    }
    select.value = value;
  }

  renderModels() {
    const select = this.el.model;
    const selected = select.value || loadSettings().model || SWARM_ALIAS;
    select.replaceChildren(modelOption(SWARM_ALIAS, `${SWARM_ALIAS} — any model`));
    for (const card of this.models) {
      const nodes = card.nodes ?? 1;
      select.append(modelOption(card.id, `${card.id} — ${nodes} node${nodes === 1 ? "" : "s"}`));
    }
    select.append(modelOption(CUSTOM, "Custom model id…"));
    this.ensureModelOption(selected);
    this.syncCustomModel();
  }

  async refreshModels() {
    try {
      const list = await getJson("/v1/models", { background: true });
      const next = (list.data || []).map((m) => ({ id: m.id, nodes: m.nodes, n_ctx: m.n_ctx }));
      if (JSON.stringify(next) !== JSON.stringify(this.models)) {
        this.models = next;
        this.renderModels();
      }
    } catch {
      /* the network view shows connection problems */
    }
  }
}
