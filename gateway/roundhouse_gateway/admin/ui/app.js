// Roundhouse admin page: a thin client of the gateway's admin and OpenAI APIs. No build step.
// Keys live in sessionStorage only (this tab, this session) and travel in the Authorization header.
"use strict";

const REFRESH_MS = (() => {
  const asked = Number(new URLSearchParams(location.search).get("refresh"));
  return Number.isFinite(asked) && asked >= 250 ? asked : 2000;
})();
const KEY_ADMIN = "roundhouse.adminKey";
const KEY_API = "roundhouse.apiKey";
const KEY_ENGINE = "roundhouse.playgroundEngine";
const KEY_TAB = "roundhouse.tab";
const MODES = ["vllm", "llamacpp", "ollama", "sglang", "auto"];
const ON_DEMAND = "onDemand";
const FAMILY_LABELS = { vllm: "vLLM", llamacpp: "GGUF (llama.cpp)", ollama: "Ollama", sglang: "SGLang",
                        external: "External API",
                        auto: "Auto", onDemand: "On demand" };
const HEALTH = {
  ok: ["✓", "healthy", "ok"], down: ["✗", "down", "bad"], open: ["✗", "failing (circuit open)", "bad"],
  "half-open": ["◐", "recovering", "warn"],
};

const $ = (id) => document.getElementById(id);
const state = { engines: null, enginesAt: 0, mode: null, modeAt: 0, unreachableSince: 0, requestedAt: 0,
                modeNotice: { text: "", kind: "info" }, chat: [], streaming: null };

// --- small helpers ------------------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}
const label = (family) => (family ? FAMILY_LABELS[family] || family : "nothing");
const clock = (ms) => new Date(ms).toLocaleTimeString();
const ms = (seconds) => (seconds === null || seconds === undefined ? "—" : `${Math.round(seconds * 1000)} ms`);
const secondsAgo = (t) => `${Math.max(0, Math.round((Date.now() - t) / 1000))} s ago`;

function banner(id, text, kind = "error") {
  const b = $(id);
  // Unchanged: leave it alone, so assistive technology does not announce it again every refresh.
  if (b.textContent === (text || "") && b.hidden === !text && b.classList.contains("info") === (kind === "info")) return;
  b.hidden = !text;
  b.textContent = text || "";
  b.classList.toggle("info", kind === "info");
  b.setAttribute("role", kind === "info" ? "status" : "alert");
}

// Calls the gateway; resolves to {ok, status, data, message, unreachable}. Never throws.
async function call(path, { method = "GET", body, key = "admin", timeout = REFRESH_MS * 2 } = {}) {
  const secret = sessionStorage.getItem(key === "admin" ? KEY_ADMIN : KEY_API);
  const headers = {};
  if (secret) headers.Authorization = `Bearer ${secret}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let r;
  try {
    r = await fetch(new URL(path, gatewayRoot()), {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(timeout), cache: "no-store",
    });
  } catch (err) {
    const why = err.name === "TimeoutError" ? `no answer within ${timeout / 1000} s` : "connection failed";
    return { ok: false, status: 0, unreachable: true, message: `the gateway did not answer (${why})` };
  }
  let data = null;
  try { data = await r.json(); } catch { /* not JSON: keep the status */ }
  const message = data && data.error ? data.error.message : `HTTP ${r.status}`;
  return { ok: r.ok, status: r.status, data, message, unreachable: false };
}

// The page lives at <root>/ui/: the APIs are one level up, whatever prefix a proxy adds.
function gatewayRoot() { return new URL("../", location.href); }

function reachable(result) {
  if (result.unreachable) {
    if (!state.unreachableSince) state.unreachableSince = Date.now();
  } else {
    state.unreachableSince = 0;
  }
  showConnection();
}

function showConnection() {
  const c = $("connection");
  const last = Math.max(state.enginesAt, state.modeAt);
  if (state.unreachableSince) {
    c.textContent = `✗ Gateway unreachable since ${clock(state.unreachableSince)}` +
      (last ? ` — showing data from ${secondsAgo(last)}` : " — no data yet");
    c.classList.add("bad");
  } else {
    c.textContent = last ? `✓ Connected — updated ${clock(last)}, every ${REFRESH_MS / 1000} s` : "Connecting…";
    c.classList.remove("bad");
  }
}

// --- keys ---------------------------------------------------------------------------------------
function showKeys() {
  const has = (k) => (sessionStorage.getItem(k) ? "set for this session" : "not set");
  $("keys-state").textContent = `Admin key: ${has(KEY_ADMIN)} · API key: ${has(KEY_API)}`;
}

function setupKeys() {
  $("keys-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    for (const [input, key] of [["admin-key", KEY_ADMIN], ["api-key", KEY_API]]) {
      const v = $(input).value.trim();
      if (v) sessionStorage.setItem(key, v);
      $(input).value = "";
    }
    showKeys();
    refreshAll();
  });
  $("keys-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_ADMIN);
    sessionStorage.removeItem(KEY_API);
    showKeys();
    refreshAll();
  });
  showKeys();
}

// A view that shows one admin path: it needs the admin key, and keeps its last data, marked stale,
// while the gateway does not answer. `holder` keeps {report, at}; `stale` is the element to mark.
async function refreshAdminView(view, path, holder, render, stale, what) {
  if (!sessionStorage.getItem(KEY_ADMIN)) {
    banner(`${view}-banner`, "This view needs the admin key: enter it above.", "info");
    return;
  }
  const r = await call(path);
  if (r.ok) {
    holder.report = r.data;
    holder.at = Date.now();
    banner(`${view}-banner`, "");
    render();
  } else if (r.unreachable) {
    banner(`${view}-banner`, `Gateway unreachable: ${r.message}.` +
      (holder.at ? ` Showing ${what} from ${clock(holder.at)}.` : ""));
    $(stale).classList.add("stale");
  } else {
    banner(`${view}-banner`, `The gateway answered HTTP ${r.status}: ${r.message}`);
  }
}

// --- tabs ---------------------------------------------------------------------------------------
function selectTab(tab, focus = false) {
  for (const t of document.querySelectorAll('[role="tab"]')) {
    const on = t === tab;
    t.setAttribute("aria-selected", String(on));
    t.tabIndex = on ? 0 : -1;
    $(t.getAttribute("aria-controls")).hidden = !on;
  }
  if (focus) tab.focus();
  sessionStorage.setItem(KEY_TAB, tab.id);
}

function setupTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  tabs.forEach((t, i) => {
    t.addEventListener("click", () => selectTab(t));
    t.addEventListener("keydown", (ev) => {
      const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[ev.key];
      if (next === undefined) return;
      ev.preventDefault();
      selectTab(tabs[(next + tabs.length) % tabs.length], true);
    });
  });
  const saved = $(sessionStorage.getItem(KEY_TAB) || "");
  if (saved && tabs.includes(saved)) selectTab(saved);
}

// --- engines ------------------------------------------------------------------------------------
async function refreshEngines() {
  if (!sessionStorage.getItem(KEY_ADMIN)) {
    banner("engines-banner", "This view needs the admin key: enter it above.", "info");
    renderEnginesMessage("Admin key needed.");
    return;
  }
  const r = await call("admin/engines");
  reachable(r);
  if (r.ok) {
    state.engines = r.data.engines;
    state.enginesAt = Date.now();
    banner("engines-banner", "");
    renderEngines();
    refreshEngineChoices();
  } else if (r.unreachable) {
    banner("engines-banner", `Gateway unreachable: ${r.message}.` +
      (state.enginesAt ? ` The table below is stale (from ${clock(state.enginesAt)}).` : ""));
    $("engines-table").classList.add("stale");
    $("engines-updated").textContent = state.enginesAt ? `(stale: last update ${clock(state.enginesAt)})` : "";
  } else {
    const what = r.status === 401 ? "The admin key was refused" : `The gateway answered HTTP ${r.status}`;
    banner("engines-banner", `${what}: ${r.message}`);
    if (r.status === 401 || r.status === 403) renderEnginesMessage("Not authorised: see the message above.");
  }
  showConnection();
}

function renderEnginesMessage(text) {
  $("engines-body").replaceChildren(el("tr", {}, el("td", { colspan: 10, class: "empty" }, text)));
  $("engines-updated").textContent = "";
  $("engines-table").classList.remove("stale");
}

function healthItem(ep) {
  const [symbol, word, cls] = HEALTH[ep.health] || ["?", ep.health, "warn"];
  return el("li", { title: ep.error || undefined },
    el("span", { class: `state ${cls}` }, `${symbol} ${word}`), " ", el("span", { class: "url" }, ep.url),
    ep.error ? el("span", { class: "url" }, ` — ${ep.error}`) : "");
}

function renderEngines() {
  const rows = state.engines.map((e) => el("tr", { "data-engine": e.name },
    el("th", { scope: "row" }, e.name),
    el("td", {}, label(e.family)),
    el("td", {}, e.models.join(", ")),
    el("td", {}, e.phase || "—"),  // a standalone gateway has no operator to report a phase
    el("td", {}, e.active ? "Yes" : e.standby ? "No (standby)" : "No (mode)"),
    el("td", {}, e.endpoints.length ? el("ul", { class: "replicas" }, e.endpoints.map(healthItem))
                                    : el("span", { class: "state warn" }, "– no replicas")),
    el("td", { class: "num" }, String(e.inFlight)),
    el("td", { class: "num" }, ms(e.ttftP50Seconds)),
    el("td", { class: "num" }, e.tokensPerSecond ? e.tokensPerSecond.toFixed(1) : "0"),
    el("td", { class: "why" }, e.message || "")));
  $("engines-body").replaceChildren(...(rows.length ? rows
    : [el("tr", {}, el("td", { colspan: 10, class: "empty" }, "The gateway knows no engines."))]));
  $("engines-table").classList.remove("stale");
  $("engines-updated").textContent = `(updated ${clock(state.enginesAt)})`;
}

// --- engine mode ----------------------------------------------------------------------------------
async function refreshMode() {
  if (!sessionStorage.getItem(KEY_ADMIN)) {
    banner("mode-banner", "Switching the engine mode needs the admin key: enter it above.", "info");
    $("mode-cards").replaceChildren();
    $("mode-phase").textContent = "";
    $("mode-elapsed").textContent = "";
    return;
  }
  const r = await call("admin/engine-mode");
  reachable(r);
  if (r.ok) {
    state.mode = r.data;
    state.modeAt = Date.now();
    banner("mode-banner", state.modeNotice.text, state.modeNotice.kind);
    renderMode();
  } else if (r.unreachable) {
    banner("mode-banner", `Gateway unreachable: ${r.message}. The cards below are stale.`);
  } else {
    banner("mode-banner", `${r.status === 401 ? "The admin key was refused" : `HTTP ${r.status}`}: ${r.message}`);
  }
  showConnection();
}

function familyHealth(f) {
  if (f.health === "ok") return el("span", { class: "state ok" }, `✓ healthy (${f.healthyEndpoints} of ${f.endpoints})`);
  if (f.health === "degraded") {
    return el("span", { class: "state warn" }, `◐ degraded (${f.healthyEndpoints} of ${f.endpoints} healthy)`);
  }
  if (f.health === "unavailable") return el("span", { class: "state bad" }, "✗ unavailable");
  return el("span", { class: "state warn" }, "– no engines");
}

// Cards are built once and updated in place: a refresh must not take keyboard focus away.
function modeCard(mode) {
  let card = $("mode-cards").querySelector(`li[data-mode="${mode}"]`);
  if (card) return card;
  const dd = (field) => el("dd", { "data-field": field });
  const fields = mode === ON_DEMAND
    ? [el("dt", {}, "GPU budget"), dd("budget"), el("dt", {}, "Min active"), dd("minActive"),
      el("dt", {}, "Idle after"), dd("idle"), el("dt", {}, "Drain"), dd("drain"), el("dt", {}, "Max wait"), dd("maxWait")]
    : [el("dt", {}, "Health"), dd("health"), el("dt", {}, "Engines"), dd("engines"),
      el("dt", {}, "Tokens/s"), dd("tps"), el("dt", {}, "TTFT p50"), dd("ttft"),
      el("dt", {}, "In flight"), dd("inflight")];
  card = el("li", { class: "card", "data-mode": mode },
    el("h3", {}, label(mode)), el("dl", {}, ...fields),
    el("button", { type: "button", onclick: () => confirmSwitch(mode) }));
  $("mode-cards").append(card);
  return card;
}

function updateCard(card, mode, m) {
  const chosen = m.mode === mode;
  const switching = chosen && m.phase === "Switching";
  const name = label(mode);
  const set = (field, content) => card.querySelector(`[data-field="${field}"]`).replaceChildren(content);
  card.classList.toggle("active", chosen);
  if (chosen) card.setAttribute("aria-current", "true"); else card.removeAttribute("aria-current");
  card.querySelector(".badge")?.remove();
  if (chosen) card.querySelector("h3").append(el("span", { class: "badge" }, switching ? "Switching to" : "Active"));
  if (mode === ON_DEMAND) {
    const d = m.onDemand;
    set("budget", d.gpuBudget === null ? "every GPU the nodes have" : `${d.gpuBudget} GPU${d.gpuBudget === 1 ? "" : "s"}`);
    set("minActive", `${d.minActiveSeconds} s`);
    set("idle", d.idleSeconds ? `${d.idleSeconds} s` : "never");
    set("drain", `${d.drainSeconds} s`);
    set("maxWait", `${d.maxWaitSeconds} s`);
  } else {
    const f = m.families[mode];
    set("health", familyHealth(f));
    set("engines", f.engines.length ? f.engines.join(", ") : "none");
    set("tps", f.tokensPerSecond.toFixed(1));
    set("ttft", ms(f.ttftP50Seconds));
    set("inflight", String(f.inFlight));
  }
  const button = card.querySelector("button");
  button.disabled = chosen;
  button.textContent = switching ? "Switch in progress" : chosen ? "Active now" : `Switch to ${name}`;
  button.setAttribute("aria-label", switching ? `Switching to ${name}` : chosen ? `${name} is active`
                                              : `Switch to ${name}`);
}

function renderMode() {
  const m = state.mode;
  $("mode-scope").textContent = m.standalone
    ? `Standalone gateway (engines from ${m.source || "its config file"}): switching changes this gateway's own` +
      " routing mode; there is no cluster to patch."
    : `Switching patches the EngineMode ${m.source || ""}; the operator stops the outgoing family and starts` +
      " the incoming one.";
  // On demand is offered where this gateway can run it (a cluster's EngineMode, or its own engines).
  const modes = m.onDemand ? [ON_DEMAND, ...MODES] : MODES;
  if (!m.onDemand) $("mode-cards").querySelector(`li[data-mode="${ON_DEMAND}"]`)?.remove();
  for (const mode of modes) updateCard(modeCard(mode), mode, m);
  const first = $("mode-cards").firstElementChild;
  if (m.onDemand && first !== modeCard(ON_DEMAND)) $("mode-cards").prepend(modeCard(ON_DEMAND));
  showModeStatus();
}

function showModeStatus() {
  const m = state.mode;
  if (!m) return;
  const from = m.previous ? label(m.previous) : "nothing";
  let text;
  let ticker = "";
  if (m.phase === "Switching") {
    const since = m.switchStartedAt ? Date.parse(m.switchStartedAt) : state.requestedAt || Date.now();
    text = `⟳ Switching from ${from} to ${label(m.mode)}`;
    ticker = ` — ${((Date.now() - since) / 1000).toFixed(1)} s elapsed`;
  } else if (m.phase === "Ready") {
    text = `✓ Ready: ${label(m.mode)} is active` +
      (m.lastSwitchSeconds !== null && m.lastSwitchSeconds !== undefined
        ? ` (last switch, from ${from}, took ${m.lastSwitchSeconds} s)` : "");
  } else if (m.phase === "Degraded") {
    text = `◐ Degraded: ${label(m.mode)} — ${m.message || "some engines are not where the mode wants them"}`;
  } else {
    text = m.mode ? `Mode ${label(m.mode)} (no status reported yet)` : "No engine mode is set.";
  }
  // Screen readers hear the phase when it changes, not the elapsed time ticking four times a second.
  if ($("mode-phase").textContent !== text) $("mode-phase").textContent = text;
  $("mode-elapsed").textContent = ticker;
}

function confirmSwitch(mode) {
  const d = $("mode-confirm");
  const current = state.mode && state.mode.mode ? label(state.mode.mode) : "nothing";
  $("mode-confirm-text").textContent = `Switch from ${current} to ${label(mode)}? ` +
    (state.mode && state.mode.standalone
      ? "This gateway will route to the new family as soon as it answers."
      : "The outgoing engines are drained and stopped; requests are held until the new family is ready.");
  d.returnValue = "";
  d.onclose = () => { if (d.returnValue === "confirm") switchMode(mode); };
  d.showModal();
}

// The outcome of the last switch request stays on screen until the next one.
async function switchMode(mode) {
  state.requestedAt = Date.now();
  $("mode-phase").textContent = `⟳ Asking the gateway to switch to ${label(mode)}…`;
  const r = await call("admin/engine-mode", { method: "PUT", body: { mode } });
  state.modeNotice = r.ok
    ? { text: r.data.message || `Switch requested: ${label(r.data.previous)} → ${label(r.data.mode)}` +
        (r.data.engineMode ? ` (EngineMode ${r.data.engineMode} patched).` : "."), kind: "info" }
    : { text: `Could not switch to ${label(mode)}: ${r.message}` + (r.status ? ` (HTTP ${r.status})` : ""),
        kind: "error" };
  banner("mode-banner", state.modeNotice.text, state.modeNotice.kind);
  if (!r.ok) { showModeStatus(); return; }
  await refreshMode();
}

// --- playground -----------------------------------------------------------------------------------
async function loadModels() {
  const r = await call("v1/models", { key: "api" });
  const select = $("play-model");
  if (!r.ok) {
    const needs = r.status === 401 ? (sessionStorage.getItem(KEY_API) ? "The API key was refused"
      : "The playground needs an API key: enter it above") : `Cannot list models: ${r.message}`;
    banner("play-banner", r.status === 401 ? `${needs}.` : needs);
    return;
  }
  const ids = r.data.data.map((m) => m.id);
  banner("play-banner", ids.length ? "" : "No model is served by an active engine right now.", "info");
  if (select.dataset.signature === ids.join(",")) return; // unchanged: leave the user's choice alone
  select.dataset.signature = ids.join(",");
  const keep = select.value;
  select.replaceChildren(...ids.map((id) => el("option", { value: id }, id)));
  if (ids.includes(keep)) select.value = keep;
}

function refreshEngineChoices() {
  const select = $("play-engine");
  const names = (state.engines || []).map((e) => e.name).sort();
  const signature = names.join(",");
  if (select.dataset.signature === signature && select.options.length) return;
  select.dataset.signature = signature;
  const wanted = select.value || sessionStorage.getItem(KEY_ENGINE) || "auto";
  select.replaceChildren(
    el("option", { value: "auto" }, "Auto (let the gateway route)"),
    el("optgroup", { label: "Family" },
      ["vllm", "llamacpp", "ollama", "sglang", "external"].map((f) => el("option", { value: f }, label(f)))),
    names.length ? el("optgroup", { label: "Engine" }, names.map((n) => el("option", { value: n }, n))) : []);
  select.value = [...select.options].some((o) => o.value === wanted) ? wanted : "auto";
}

function addMessage(who, text, cls = "") {
  const body = el("span", { class: "text" }, text);
  $("chat-log").append(el("li", { class: `msg ${who} ${cls}` }, el("span", { class: "who" },
    who === "user" ? "You" : "Assistant"), body));
  return body;
}

function showRoute(info) {
  for (const [id, v] of Object.entries(info)) $(id).textContent = v;
}

// Minimal SSE reader for OpenAI streams: events are separated by a blank line, data lines joined.
async function* sseData(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart());
      if (data.length) yield data.join("\n");
    }
  }
}

async function send(text) {
  const model = $("play-model").value;
  if (!model) { banner("play-banner", "Choose a model first (none is listed: check the API key and engines)."); return; }
  const engine = $("play-engine").value || "auto";
  sessionStorage.setItem(KEY_ENGINE, engine);
  state.chat.push({ role: "user", content: text });
  addMessage("user", text);
  const out = addMessage("assistant", "…");
  const controller = new AbortController();
  state.streaming = controller;
  $("chat-send").disabled = true;
  $("chat-stop").disabled = false;
  showRoute({ "route-engine": "…", "route-reason": "…", "route-request-id": "…", "route-ttft": "…",
              "route-status": "sending" });
  const headers = { "Content-Type": "application/json" };
  const key = sessionStorage.getItem(KEY_API);
  if (key) headers.Authorization = `Bearer ${key}`;
  if (engine !== "auto") headers["X-Roundhouse-Engine"] = engine;
  const started = performance.now();
  let answer = "";
  let status = "done";
  try {
    const r = await fetch(new URL("v1/chat/completions", gatewayRoot()), {
      method: "POST", headers, signal: controller.signal, cache: "no-store",
      body: JSON.stringify({ model, messages: state.chat, stream: true, stream_options: { include_usage: true } }),
    });
    const servedBy = r.headers.get("X-Roundhouse-Engine");
    const known = (state.engines || []).find((e) => e.name === servedBy);
    showRoute({ "route-engine": servedBy ? (known ? `${servedBy} (${label(known.family)})` : servedBy) : "none",
                "route-reason": r.headers.get("X-Roundhouse-Route-Reason") || "—",
                "route-request-id": r.headers.get("X-Request-Id") || "—", "route-status": `HTTP ${r.status}` });
    if (!r.ok) {
      let message = `HTTP ${r.status}`;
      try { message = (await r.json()).error.message; } catch { /* keep the status */ }
      throw new Error(`The gateway refused the request (HTTP ${r.status}): ${message}`);
    }
    for await (const data of sseData(r.body)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(`The engine failed mid-answer: ${chunk.error.message}`);
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta && chunk.choices[0].delta.content;
      if (!delta) continue;
      if (!answer) $("route-ttft").textContent = `${Math.round(performance.now() - started)} ms`;
      answer += delta;
      out.textContent = answer;
    }
    if (!answer) out.textContent = "(empty answer)";
  } catch (err) {
    if (err.name === "AbortError") {
      status = "stopped";
      out.textContent = `${answer} [stopped]`;
    } else {
      status = "error";
      out.textContent = err.name === "TypeError" ? `The gateway did not answer: ${err.message}` : err.message;
      out.parentElement.classList.add("error");
    }
  } finally {
    state.streaming = null;
    $("chat-send").disabled = false;
    $("chat-stop").disabled = true;
    $("route-status").textContent = `${$("route-status").textContent.replace(/ · .*/, "")} · ${status}`;
    if ($("route-ttft").textContent === "…") $("route-ttft").textContent = "—";
  }
  if (answer) state.chat.push({ role: "assistant", content: answer });
  else state.chat.pop(); // nothing came back: do not send a dangling turn next time
}

function setupPlayground() {
  refreshEngineChoices();
  $("play-engine").addEventListener("change", () => sessionStorage.setItem(KEY_ENGINE, $("play-engine").value));
  $("chat-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("chat-input").value.trim();
    if (!text || state.streaming) return;
    $("chat-input").value = "";
    send(text);
  });
  $("chat-input").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); $("chat-form").requestSubmit(); }
  });
  $("chat-stop").addEventListener("click", () => state.streaming && state.streaming.abort());
  $("chat-clear").addEventListener("click", () => { state.chat = []; $("chat-log").replaceChildren(); });
}

// --- refresh loop -------------------------------------------------------------------------------
let refreshing = false;
async function refreshAll() {
  if (refreshing) return;
  refreshing = true;
  try {
    await Promise.all([refreshEngines(), refreshMode(), loadModels(), refreshUsage(), refreshBudget(),
                       refreshCompare()]);
  } finally { refreshing = false; }
}

document.addEventListener("DOMContentLoaded", () => {
  setupKeys();
  setupTabs();
  setupPlayground();
  refreshAll();
  setInterval(refreshAll, REFRESH_MS);
  // The elapsed time of a switch in progress ticks between refreshes.
  setInterval(() => { if (state.mode && state.mode.phase === "Switching") showModeStatus(); }, 250);
});
