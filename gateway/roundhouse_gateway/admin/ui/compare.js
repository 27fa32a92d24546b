// Roundhouse admin page, Compare tab: per model, its A/B arms and shadows side by side over the last
// window, and a verdict line per candidate, from GET /admin/compare. Uses app.js's helpers (call, el,
// banner, clock, ms); app.js's refresh loop calls refreshCompare().
"use strict";

const compareState = { report: null, at: 0 };

async function refreshCompare() {
  await refreshAdminView("compare", "admin/compare", compareState, renderCompare, "compare-models", "the comparison");
}

const pct = (x) => (x === null || x === undefined ? "—" : `${Math.round(x * 100)}%`);
const num = (x) => (x === null || x === undefined ? "—" : String(x));
// A copy is sent without streaming: its first byte comes with its whole answer, so it has no TTFT of its
// own, and "—" with a reason says so rather than a number that would read as a slow first token.
const NOT_STREAMED = "A copy is not streamed: its first byte is its whole answer";
const ttft = (key) => (a) => (a.role === "shadow"
  ? el("span", { class: "hint", title: NOT_STREAMED }, "— not measured") : ms(a[key]));

// The rows of a model's table: a label and how to read each arm's cell.
const COMPARE_ROWS = [
  ["Role", (a) => (a.role !== "shadow" ? `answers clients: weight ${num(a.weight)}`
    : a.percent !== undefined ? `shadow: ${num(a.percent)}% of ${a.shadowOf}` : "copies of A/B requests")],
  ["Family", (a) => label(a.family)],
  ["Requests", (a) => num(a.requests)],
  ["Errors", (a) => num(a.errors)],
  ["TTFT p50", ttft("ttftP50")],
  ["TTFT p95", ttft("ttftP95")],
  ["Latency p50", (a) => ms(a.latencyP50)],
  ["Latency p95", (a) => ms(a.latencyP95)],
  ["Tokens/s", (a) => num(a.tokensPerSecond)],
  ["Answer tokens (mean)", (a) => num(a.answerTokens)],
  ["Agreement with the primary", (a) => (a.agreement
    ? `${pct(a.agreement.exactRate)} exact, similarity ${a.agreement.similarity.toFixed(2)} (${a.agreement.pairs} pairs)`
    : "—")],
  ["Copies shed", (a) => num(a.shed)],
];

function modeltable(m) {
  // The baseline first, then the others in the gateway's order: both arms side by side.
  const isBase = (a) => a.role === "arm" && a.engine === m.baseline;
  const arms = [...m.arms].sort((x, y) => isBase(y) - isBase(x));
  const caption = el("caption", {}, `Model ${m.model}`);
  // An engine can both answer (an arm) and get copies (a shadow, or the other arm of an A/B request).
  const note = (a) => (isBase(a) ? " (baseline)" : a.role === "shadow" ? " (copies)" : "");
  const head = el("tr", {}, el("th", { scope: "col" }, "Figure"),
    ...arms.map((a) => el("th", { scope: "col", "data-engine": a.engine, "data-role": a.role },
      a.engine, el("span", { class: "hint" }, note(a)))));
  const body = COMPARE_ROWS.map(([name, cell]) => el("tr", {}, el("th", { scope: "row" }, name),
    ...arms.map((a) => el("td", { "data-engine": a.engine, "data-role": a.role }, cell(a)))));
  return el("div", { class: "table-wrap", role: "region", tabindex: "0", "aria-label": `Comparison for ${m.model}` },
    el("table", { class: "compare", "data-model": m.model }, caption, el("thead", {}, head), el("tbody", {}, body)));
}

function renderCompare() {
  const report = compareState.report;
  const root = document.getElementById("compare-models");
  root.classList.remove("stale");
  const minutes = Math.round(report.windowSeconds / 60);
  document.getElementById("compare-scope").textContent = `Answers of the last ${minutes} minutes, counted by this`
    + ` gateway replica (updated ${clock(compareState.at)}). Arms are engines serving one name, split by weight and`
    + " kept per user; shadows get a copy of a share of a model's requests and never answer clients.";
  if (!report.models.length) {
    root.replaceChildren(el("p", { class: "empty" }, "Nothing to compare yet: give two engines the same served name,"
      + " or an engine spec.routing.shadow, and send requests."));
    return;
  }
  root.replaceChildren(...report.models.map((m) => el("section", { class: "compare-model", "data-model": m.model },
    el("h2", {}, m.model),
    el("ul", { class: "verdicts", "aria-label": `Verdicts for ${m.model}` },
      ...(m.verdicts.length ? m.verdicts : ["only one arm so far"]).map((v) => el("li", { class: "verdict" }, v))),
    modeltable(m))));
}
