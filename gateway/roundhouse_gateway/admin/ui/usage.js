// Roundhouse admin page, Usage tab: totals per key name and tokens per minute over the last hour,
// from GET /admin/usage. Uses app.js's helpers (call, el, banner, clock); app.js's refresh loop calls
// refreshUsage().
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const usageState = { report: null, at: 0 };

function svgEl(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

async function refreshUsage() {
  await refreshAdminView("usage", "admin/usage", usageState, renderUsage, "usage-table", "usage");
}

function renderUsage() {
  const report = usageState.report;
  const keys = Object.keys(report.totals).sort();
  const rows = keys.map((k) => {
    const t = report.totals[k];
    return el("tr", { "data-key": k }, el("th", { scope: "row" }, k || "(no key: authentication off)"),
      el("td", { class: "num" }, String(t.requests)), el("td", { class: "num" }, String(t.promptTokens)),
      el("td", { class: "num" }, String(t.completionTokens)), el("td", { class: "num" }, String(t.errors)));
  });
  document.getElementById("usage-body").replaceChildren(...(rows.length ? rows
    : [el("tr", {}, el("td", { colspan: 5, class: "empty" }, "No requests yet."))]));
  document.getElementById("usage-table").classList.remove("stale");
  document.getElementById("usage-updated").textContent = `(updated ${clock(usageState.at)})`;
  document.getElementById("usage-scope").textContent = scopeText(report);
  renderChart(report.tokensPerMinute);
}

// Where the figures come from: the shared store (every replica's), or this replica alone.
function scopeText(report) {
  const state = report.state || {};
  if (report.limitsScope === "store") return `Every gateway replica's counts, from the shared state store ${state.store}.`;
  if (state.degraded) {
    return `The state store ${state.store} does not answer (since ${state.degradedSince}): counted by this gateway`
      + " replica alone until it returns; its counts are written back then.";
  }
  return `Counted by this gateway replica (kept in ${state.store || "memory"}): with several replicas, each shows its own.`;
}

// One bar a minute, stacked by nothing: the total across keys (the table has the split).
function renderChart(series) {
  const chart = document.getElementById("usage-chart");
  const totals = series.map((m) => Object.values(m.tokens).reduce((a, b) => a + b, 0));
  const peak = Math.max(1, ...totals);
  const width = 600 / Math.max(1, series.length);
  const bars = totals.map((n, i) => {
    const h = (n / peak) * 150;
    const bar = svgEl("rect", { x: i * width + 1, y: 158 - h, width: Math.max(1, width - 2), height: h,
                                class: "bar", "data-minute": series[i].minute, "data-tokens": n });
    const tip = svgEl("title");
    tip.textContent = `${series[i].minute}: ${n} tokens`;
    bar.append(tip);
    return bar;
  });
  chart.replaceChildren(svgEl("line", { x1: 0, y1: 158, x2: 600, y2: 158, class: "axis" }), ...bars);
  const sum = totals.reduce((a, b) => a + b, 0);
  document.getElementById("usage-chart-summary").textContent =
    `${sum} tokens in the last ${series.length} minutes; the busiest minute had ${Math.max(0, ...totals)}.`;
}
