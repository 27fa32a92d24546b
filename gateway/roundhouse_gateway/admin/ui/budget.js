// Roundhouse admin page, the Engine mode tab's GPU budget (mode onDemand): who holds the GPUs, who
// waits, the last swaps and the GPUs held per engine over the last hour, from GET /admin/budget.
// Uses app.js's helpers (call, el, banner, clock) and usage.js's svgEl; app.js's refresh loop calls
// refreshBudget().
"use strict";

const budgetState = { data: null, at: 0 };
const STATE_WORDS = {
  running: ["●", "running", "ok"], starting: ["◐", "starting", "warn"], draining: ["◑", "draining", "warn"],
  stopping: ["◌", "stopping", "warn"], waiting: ["◔", "waiting for GPUs", "warn"],
  standby: ["○", "standby", ""], failed: ["✗", "failed", "bad"],
};

async function refreshBudget() {
  if (!sessionStorage.getItem("roundhouse.adminKey")) {
    document.getElementById("budget").hidden = true;
    return;
  }
  const r = await call("admin/budget");
  if (r.ok) {
    budgetState.data = r.data;
    budgetState.at = Date.now();
    renderBudget();
  } else if (r.unreachable && budgetState.data) {
    document.getElementById("budget-table").classList.add("stale");
    document.getElementById("budget-updated").textContent = `(stale: last update ${clock(budgetState.at)})`;
  }
}

// One colour per engine, stable across refreshes (sorted names), repeated in words everywhere.
function engineColours(engines) {
  const names = engines.map((e) => e.name).sort();
  return Object.fromEntries(names.map((n, i) => [n, `c${i % 5}`]));
}

function renderBudget() {
  const b = budgetState.data;
  const section = document.getElementById("budget");
  section.hidden = !b.onDemand;
  if (!b.onDemand) return;
  const colours = engineColours(b.engines);
  const holders = b.engines.filter((e) => e.gpusHeld > 0);
  const waiting = b.engines.filter((e) => e.waiting > 0);
  document.getElementById("budget-summary").textContent =
    `${b.gpusHeld} of ${b.gpuBudget} GPUs held` +
    (holders.length ? `: ${holders.map((e) => `${e.name} ${e.gpusHeld} (${STATE_WORDS[e.state][1]})`).join(", ")}`
                    : "; every engine is on standby") +
    (waiting.length ? `. Waiting: ${waiting.map((e) => `${e.waiting} for ${e.name}`).join(", ")}.` : ".");
  const bar = document.getElementById("budget-bar");
  bar.replaceChildren(...holders.map((e) => el("span", {
    class: `seg ${colours[e.name]} ${e.state}`, "data-engine": e.name,
    title: `${e.name}: ${e.gpusHeld} GPUs, ${STATE_WORDS[e.state][1]}`,
  }, `${e.name} ${e.gpusHeld}`)));
  // Widths by share of the budget (a style attribute would need 'unsafe-inline' under the page's CSP).
  for (const seg of bar.children) {
    const e = b.engines.find((x) => x.name === seg.dataset.engine);
    seg.style.width = `${(100 * e.gpusHeld) / Math.max(1, b.gpuBudget, b.gpusHeld)}%`;
  }
  renderBudgetEngines(b);
  renderSwaps(b.swaps);
  renderHeldChart(b, colours);
}

function stateCell(e) {
  const [symbol, word, cls] = STATE_WORDS[e.state] || ["?", e.state, "warn"];
  const extra = e.state === "starting" && e.stateSeconds !== null ? ` for ${e.stateSeconds.toFixed(1)} s`
    : e.state === "draining" ? `, ${e.inFlight} still in flight` : "";
  return el("span", { class: `state ${cls}` }, `${symbol} ${word}${extra}`);
}

function renderBudgetEngines(b) {
  const rows = b.engines.map((e) => el("tr", { "data-engine": e.name },
    el("th", { scope: "row" }, e.name),
    el("td", { "data-field": "state" }, stateCell(e)),
    el("td", { class: "num" }, `${e.gpusHeld} of ${e.gpus}`),
    el("td", { class: "num" }, String(e.inFlight)),
    el("td", { class: "num" }, String(e.waiting)),
    el("td", { class: "num" }, e.oldestWaitSeconds === null ? "—" : `${e.oldestWaitSeconds.toFixed(1)} s`),
    el("td", { class: "why" }, e.message || "")));
  document.getElementById("budget-body").replaceChildren(...(rows.length ? rows
    : [el("tr", {}, el("td", { colspan: 7, class: "empty" }, "No engine is governed by this mode."))]));
  document.getElementById("budget-table").classList.remove("stale");
  document.getElementById("budget-updated").textContent = `(updated ${clock(budgetState.at)})`;
}

function renderSwaps(swaps) {
  const items = swaps.map((s) => el("li", { "data-reason": s.reason, "data-engine": s.engine },
    el("span", { class: "when" }, clock(Date.parse(s.at))), " ", el("strong", {}, s.reason), " ",
    s.message, s.seconds !== null ? el("span", { class: "hint" }, ` (${s.seconds} s)`) : ""));
  document.getElementById("budget-swaps").replaceChildren(...(items.length ? items
    : [el("li", { class: "hint" }, "No swap yet.")]));
}

// A step chart: for each engine, a band as tall as the GPUs it held, stacked, from each change to the next.
function renderHeldChart(b, colours) {
  const chart = document.getElementById("budget-chart");
  const now = Date.now();
  // The last hour, or since the first point when the history is younger: a swap a minute ago is visible.
  const first = b.history.points.length ? Date.parse(b.history.points[0].at) : now;
  const start = Math.max(now - b.history.windowSeconds * 1000, Math.min(first, now - 60_000));
  const points = b.history.points.map((p) => ({ t: Math.max(start, Date.parse(p.at)), held: p.held }));
  const top = Math.max(1, b.gpuBudget, ...points.map((p) => Object.values(p.held).reduce((x, y) => x + y, 0)));
  const x = (t) => ((t - start) / (now - start)) * 600;
  const names = Object.keys(colours).sort();
  const shapes = [];
  points.forEach((p, i) => {
    const until = i + 1 < points.length ? points[i + 1].t : now;
    let base = 0;
    for (const n of names) {
      const g = p.held[n] || 0;
      if (!g) continue;
      const h = (g / top) * 150;
      const r = svgEl("rect", { x: x(p.t), y: 158 - base - h, width: Math.max(0.5, x(until) - x(p.t)), height: h,
                                class: colours[n], "data-engine": n });
      const tip = svgEl("title");
      tip.textContent = `${n}: ${g} GPUs from ${clock(p.t)}`;
      r.append(tip);
      shapes.push(r);
      base += h;
    }
  });
  const limit = 158 - (b.gpuBudget / top) * 150;
  chart.replaceChildren(svgEl("line", { x1: 0, y1: 158, x2: 600, y2: 158, class: "axis" }),
    svgEl("line", { x1: 0, y1: limit, x2: 600, y2: limit, class: "axis" }), ...shapes);
  const changes = Math.max(0, points.length - 1);
  const since = clock(start);
  document.getElementById("budget-chart-summary").replaceChildren(
    `${changes} change${changes === 1 ? "" : "s"} in who holds the GPUs since ${since}; ` +
    `the upper line marks the budget of ${b.gpuBudget}.`,
    el("ul", { class: "legend" }, names.map((n) => el("li", {}, el("span", { class: `swatch seg ${colours[n]}` }), n))));
}
