// LlamaNet web UI: chat with the swarm through this node, and watch the network.
// This module wires the page together: the chat (chat.js), the network view (network.js), the
// theme, the view tabs, the API key dialog and the "connected to" indicator.

import { getApiKey, getJson, setApiKey, setUnauthorizedHandler } from "./api.js";
import { Chat } from "./chat.js";
import { NetworkView } from "./network.js";

const $ = (selector) => document.querySelector(selector);
const THEME_KEY = "llamanet.theme";

const el = {
  layout: $("#layout"),
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

let selfId = null; // the node serving this page, from /info

const short = (id) => String(id || "").slice(0, 12);

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
      else if (selfId) el.connectedLabel.textContent = `node ${short(selfId)}`;
      if (ok && !selfId) loadInfo();
    },
  },
);

const chat = new Chat(
  {
    composer: $("#composer"),
    prompt: $("#prompt"),
    send: $("#send"),
    stop: $("#stop"),
    newChat: $("#new-chat"),
    messages: $("#messages"),
    empty: $("#empty-state"),
    model: $("#model"),
    modelCustom: $("#model-custom"),
    maxTokens: $("#max-tokens"),
    temperature: $("#temperature"),
    temperatureValue: $("#temperature-value"),
    stream: $("#stream-toggle"),
  },
  {
    selfId: () => selfId,
    onServed: (nodeId) => network.flash(nodeId),
  },
);

async function loadInfo() {
  try {
    const info = await getJson("/info", { background: true });
    selfId = info.node_id;
    el.connectedLabel.textContent = `node ${short(info.node_id)}`;
    el.connectedLabel.parentElement.title = `Connected to node ${info.node_id} (${info.url}), v${info.version}`;
    el.connectedLabel.parentElement.dataset.nodeId = info.node_id;
    network.setSelf(info.node_id);
  } catch {
    /* retried on the next successful poll */
  }
}

function init() {
  initTheme();
  initTabs();
  chat.init();

  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && chat.busy && !el.keyDialog.open) chat.stop();
  });

  el.keyButton.addEventListener("click", () => {
    askForKey("The API key is kept in this browser only and sent as Authorization: Bearer <key>.")
      .then((saved) => {
        if (saved) {
          network.refresh();
          chat.settings.refreshModels();
        }
      });
  });
  el.keyCancel.addEventListener("click", () => el.keyDialog.close("cancel"));
  el.keyClear.addEventListener("click", () => {
    setApiKey("");
    el.keyInput.value = "";
    el.keyDialog.close("cancel");
  });

  loadInfo();
  chat.settings.startRefresh();
  network.start();
  chat.el.prompt.focus();
  document.body.dataset.ready = "true";
}

init();
