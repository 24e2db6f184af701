// The console's pictures, drawn as SVG with DOM calls: a saga's steps on a time axis, built from its audit log,
// and the last hour of a tenant's sagas per minute. Every value from the API goes in as text (textContent) or as
// an attribute value (setAttribute), never as markup.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const ACTIVE_STATUSES = ["pending", "running", "compensating", "awaiting_input"];

function svgEl(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) node.setAttribute(name, String(value));
  }
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function withTitle(node, text) {
  node.append(svgEl("title", {}, text));
  return node;
}

function seconds(ms) {
  const s = ms / 1000;
  if (s < 1) return `${Math.round(ms)} ms`;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${Math.round(s - m * 60)} s`;
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

// --- a saga's timeline ------------------------------------------------------------------------------------

// What each event does to the picture. A bar opens at an attempt's start and closes at its outcome; a retry's
// backoff and a wait for input are bars of their own.
const ATTEMPT_END = {
  step_succeeded: "succeeded", step_attempt_failed: "retried", step_failed: "failed", input_requested: "asked",
};
const UNDO_END = { step_compensated: "compensated", compensation_attempt_failed: "retried", compensation_failed: "failed" };
const SAGA_MARKS = {
  saga_accepted: "accepted", cancel_requested: "cancel asked", cancel_refused: "cancel refused",
  compensation_begun: "undo begins", saga_paused: "paused", saga_resumed: "resumed", compensation_rerun: "undo again",
  rewind_begun: "rewind", saga_rewound: "rewound", saga_completed: "completed", saga_compensated: "compensated",
  saga_failed: "failed", saga_restarted: "restarted", recovered: "recovered",
};

/** The timeline of a saga as lanes of bars and marks, in milliseconds since the epoch. */
function timelineModel(saga, events, now) {
  const lanes = new Map();
  const lane = (name, kind) => {
    if (!lanes.has(name)) lanes.set(name, { name, kind: kind || "", bars: [], marks: [] });
    return lanes.get(name);
  };
  const sagaLane = { name: "saga", kind: "", bars: [], marks: [], saga: true };
  lanes.set("", sagaLane);  // keyed apart from the steps, which may have any name
  for (const step of saga.steps) lane(step.name, step.kind);
  const open = new Map();  // `${step}|forward` / `${step}|undo` / `${step}|input` -> the bar still open
  const waits = [];        // backoff bars, clipped by whatever ends them early
  let pivotPassedAt = null;
  const pivot = saga.steps.find((s) => s.kind === "pivot");
  const close = (key, at, outcome, note) => {
    const bar = open.get(key);
    if (!bar) return null;
    open.delete(key);
    bar.end = Math.max(at, bar.start);
    bar.outcome = outcome;
    if (note) bar.note = note;
    return bar;
  };
  const clipWaits = (stepName, at) => {
    for (const wait of waits) {
      if ((stepName === null || wait.step === stepName) && wait.start <= at && wait.end > at) wait.end = at;
    }
  };
  let last = new Date(saga.created_at).getTime();
  for (const event of events) {
    const at = new Date(event.created_at).getTime();
    last = Math.max(last, at);
    const detail = event.detail || {};
    const name = event.step;
    const where = name ? lane(name) : sagaLane;
    if (event.kind === "step_started" || event.kind === "compensation_started") {
      const mode = event.kind === "step_started" ? "forward" : "undo";
      close(`${name}|${mode}`, at, "lost", "no outcome was reported (the worker stopped or lost its lease)");
      clipWaits(name, at);
      const bar = { kind: mode === "forward" ? "attempt" : "undo", step: name, start: at, end: null,
        attempt: detail.attempt, outcome: "running", redelivered: Boolean(detail.redelivered) };
      open.set(`${name}|${mode}`, bar);
      where.bars.push(bar);
    } else if (event.kind in ATTEMPT_END || event.kind in UNDO_END) {
      const mode = event.kind in ATTEMPT_END ? "forward" : "undo";
      const outcome = ATTEMPT_END[event.kind] || UNDO_END[event.kind];
      const bar = close(`${name}|${mode}`, at, outcome, detail.error || detail.reason || null);
      if (!bar && (outcome === "failed")) where.marks.push({ kind: "failed", at, note: detail.error || "" });
      if (outcome === "retried" && typeof detail.retry_in === "number") {
        const wait = { kind: "retry-wait", undo: mode === "undo", step: name, start: at,
          end: at + detail.retry_in * 1000, note: detail.error || "" };
        waits.push(wait);
        where.bars.push(wait);
      }
      if (event.kind === "input_requested") {
        const wait = { kind: "input-wait", step: name, start: at, end: null, outcome: "waiting",
          until: detail.until ? new Date(detail.until).getTime() : null, fields: detail.fields || [],
          note: detail.reason || "" };
        open.set(`${name}|input`, wait);
        where.bars.push(wait);
      }
      if (event.kind === "step_succeeded" && pivot && name === pivot.name) pivotPassedAt = at;
    } else if (event.kind === "input_received") {
      close(`${name}|input`, at, "received");
    } else if (event.kind === "step_checkpoint" || event.kind === "compensation_checkpoint") {
      where.marks.push({ kind: "checkpoint", at, note: JSON.stringify(detail.values || {}) });
    } else {
      if (event.kind === "compensation_begun") {
        for (const key of [...open.keys()]) if (key.endsWith("|input")) close(key, at, "ended", detail.reason);
        clipWaits(null, at);
      }
      sagaLane.marks.push({ kind: event.kind, at, label: SAGA_MARKS[event.kind] || event.kind.replace(/_/g, " "),
        note: detail.reason || detail.error || (Object.keys(detail).length ? JSON.stringify(detail) : "") });
    }
  }
  const active = ACTIVE_STATUSES.includes(saga.status);
  const end = active ? Math.max(now, last) : last;
  for (const bar of open.values()) {
    bar.end = end;
    if (!active) bar.outcome = bar.kind === "input-wait" ? "ended" : "lost";
  }
  let stop = end;
  for (const l of lanes.values()) for (const bar of l.bars) stop = Math.max(stop, bar.end);
  const start = Math.min(new Date(saga.created_at).getTime(), ...events.map((e) => new Date(e.created_at).getTime()));
  // A wait for input shows where it ends, unless that is far beyond what happened so far (then its bar says when).
  const until = saga.awaiting_input ? new Date(saga.awaiting_input.until).getTime() : null;
  if (until && until > stop && until - stop <= Math.max(3 * (stop - start), 30000)) stop = until;
  return { lanes: [...lanes.values()], start, stop, last, until, pivot: pivot ? pivot.name : null, pivotPassedAt,
    active };
}

// A past stretch in which nothing but waiting happened, longer than GAP_MS and this share of the whole, is drawn
// GAP_PIXELS wide (with a break in the axis), so the attempts around a long wait stay wide enough to see.
const GAP_SHARE = 0.3;
const GAP_MS = 5000;
const GAP_PIXELS = 56;
const GAP_PAD = 0.03;

/** Time to x: linear, except over long past stretches where nothing ran (their segments are `cut`). */
function timeScale(model, left, width) {
  const span = Math.max(model.stop - model.start, 50);
  const busy = [];
  for (const lane of model.lanes) {
    for (const bar of lane.bars) if (bar.kind === "attempt" || bar.kind === "undo") busy.push([bar.start, bar.end]);
    for (const mark of lane.marks) if (mark.kind !== "recovered") busy.push([mark.at, mark.at]);
  }
  busy.sort((a, b) => a[0] - b[0]);
  const gaps = [];
  let reach = model.start;
  for (const [from, to] of busy) {
    if (from - reach > Math.max(GAP_SHARE * span, GAP_MS) && from <= model.last) gaps.push([reach, from]);
    reach = Math.max(reach, to);
  }
  // Each side of a cut keeps a little of its wait, measured against what is drawn to scale (not the whole span,
  // which a long wait dominates), so quick work around the wait keeps most of the width.
  const pad = GAP_PAD * (span - gaps.reduce((n, [a, b]) => n + (b - a), 0));
  const cuts = gaps.map(([a, b]) => [a + pad, b - pad]);
  const cutTime = cuts.reduce((n, [a, b]) => n + (b - a), 0);
  const perMs = Math.max(width - cuts.length * GAP_PIXELS, width / 2) / Math.max(span - cutTime, 1);
  const segments = [];
  let t = model.start;
  let x = left;
  for (const [a, b] of cuts) {
    segments.push({ from: t, to: a, x0: x, x1: x + (a - t) * perMs, cut: false });
    x += (a - t) * perMs;
    segments.push({ from: a, to: b, x0: x, x1: x + GAP_PIXELS, cut: true });
    x += GAP_PIXELS;
    t = b;
  }
  segments.push({ from: t, to: Math.max(model.stop, t), x0: x, x1: x + (Math.max(model.stop, t) - t) * perMs, cut: false });
  const at = (time) => {
    const seg = segments.find((s) => time <= s.to) || segments[segments.length - 1];
    const share = seg.to > seg.from ? (Math.min(Math.max(time, seg.from), seg.to) - seg.from) / (seg.to - seg.from) : 0;
    return seg.x0 + share * (seg.x1 - seg.x0);
  };
  return { at, segments, linear: span - cutTime };
}

// Tick spacing: the first of these (ms) that gives at most about eight ticks.
const TICKS = [100, 200, 500, 1000, 2000, 5000, 10000, 15000, 30000, 60000, 120000, 300000, 600000, 900000,
  1800000, 3600000, 7200000, 21600000, 43200000, 86400000];

function tickLabel(ms) {
  if (ms === 0) return "0";
  if (ms < 60000) return `+${ms % 1000 ? (ms / 1000).toFixed(1) : ms / 1000} s`;
  if (ms < 3600000) return `+${Math.floor(ms / 60000)}:${String(Math.round((ms % 60000) / 1000)).padStart(2, "0")}`;
  return `+${(ms / 3600000).toFixed(ms % 3600000 ? 1 : 0)} h`;
}

const BAR_TEXT = {
  attempt: (bar) => `attempt ${bar.attempt ?? ""}`.trim(),
  undo: (bar) => `undo ${bar.attempt ?? ""}`.trim(),
  "retry-wait": (bar) => `wait ${seconds(bar.end - bar.start)}`,
  "input-wait": (bar) => `awaiting input: ${bar.fields.join(", ")}`,
};
const OUTCOME_WORDS = {
  succeeded: "succeeded", retried: "failed, retried after a backoff", failed: "failed", asked: "asked for input",
  running: "running", lost: "ended without an outcome", compensated: "undone", received: "input received",
  ended: "wait ended", waiting: "waiting",
};

function barTitle(lane, bar) {
  const length = seconds(bar.end - bar.start);
  const what = bar.kind === "retry-wait" ? `${bar.undo ? "undo " : ""}backoff before the next attempt, ${length}`
    : bar.kind === "input-wait" ? `waiting for ${bar.fields.join(", ")}: ${OUTCOME_WORDS[bar.outcome]} after ${length}` +
      (bar.until ? `; the wait ends ${new Date(bar.until).toLocaleString()}` : "")
      : `${bar.kind === "undo" ? "undo" : "attempt"} ${bar.attempt ?? ""}: ${OUTCOME_WORDS[bar.outcome] || bar.outcome}` +
        ` after ${length}${bar.redelivered ? " (redelivered)" : ""}`;
  return `${lane.name}, ${what}${bar.note ? `\n${bar.note}` : ""}`;
}

/** Draw the model into `svg`, `width` pixels wide. */
function drawTimeline(svg, model, width) {
  const labelWidth = 210;
  const right = 24;
  const laneHeight = 30;
  const top = 22;
  const plot = Math.max(200, width - labelWidth - right);
  const scale = timeScale(model, labelWidth, plot);
  const x = scale.at;
  const height = top + model.lanes.length * laneHeight + 26;
  svg.replaceChildren();
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.dataset.start = new Date(model.start).toISOString();
  svg.dataset.stop = new Date(model.stop).toISOString();
  svg.dataset.plot = plot;

  const step = TICKS.find((t) => scale.linear / t <= 8) || TICKS[TICKS.length - 1];
  const grid = svgEl("g", { class: "tl-grid" });
  let lastLabel = -Infinity;
  for (const seg of scale.segments) {
    if (seg.cut) {
      grid.append(svgEl("text", { x: (seg.x0 + seg.x1) / 2, y: height - 8, class: "tl-tick cut" },
        `\u22EF ${seconds(seg.to - seg.from)} \u22EF`));
      lastLabel = seg.x1;
      continue;
    }
    for (let t = Math.ceil((seg.from - model.start) / step) * step; model.start + t <= seg.to; t += step) {
      const tx = x(model.start + t);
      grid.append(svgEl("line", { x1: tx, x2: tx, y1: top - 4, y2: height - 22 }));
      if (tx - lastLabel < 44) continue;
      grid.append(svgEl("text", { x: tx, y: height - 8, class: "tl-tick" }, tickLabel(t)));
      lastLabel = tx;
    }
  }
  svg.append(grid);

  model.lanes.forEach((lane, i) => {
    const y = top + i * laneHeight;
    const row = svgEl("g", { class: `tl-lane${lane.saga ? " tl-saga" : ""}` });
    row.dataset.step = lane.name;
    row.append(svgEl("rect", { x: 0, y, width, height: laneHeight, class: `tl-band${i % 2 ? " odd" : ""}` }));
    const label = svgEl("text", { x: 8, y: y + laneHeight / 2 + 4, class: "tl-label" }, lane.name);
    if (lane.kind) {
      label.append(svgEl("tspan", { class: `tl-kind${lane.kind === "pivot" ? " pivot" : ""}`, dx: 6 },
        lane.kind === "pivot" ? "pivot \u25C6" : lane.kind));
    }
    row.append(label);
    for (const bar of lane.bars) {
      if (bar.kind === "input-wait" && bar.outcome === "waiting" && bar.until > bar.end) {
        const rest = Math.min(bar.until, model.stop);  // what is left of the wait, drawn as an outline
        row.append(withTitle(svgEl("rect", { x: x(bar.end), y: y + 9, width: Math.max(0, x(rest) - x(bar.end)),
          height: laneHeight - 18, rx: 2, class: "tl-remaining" }), `${seconds(bar.until - bar.end)} of the wait left`));
      }
      const x1 = x(bar.start);
      const w = Math.max(3, x(bar.end) - x1);
      const thin = bar.kind === "retry-wait" || bar.kind === "input-wait";
      const classes = ["tl-bar", bar.kind, bar.outcome || "", bar.undo ? "undo-wait" : ""].filter(Boolean).join(" ");
      const rect = withTitle(svgEl("rect", {
        x: x1, y: y + (thin ? 9 : 6), width: w, height: laneHeight - (thin ? 18 : 12), rx: 2, class: classes,
      }), barTitle(lane, bar));
      rect.dataset.kind = bar.kind;
      rect.dataset.step = lane.name;
      if (bar.outcome) rect.dataset.outcome = bar.outcome;
      if (bar.attempt !== undefined) rect.dataset.attempt = bar.attempt;
      rect.dataset.ms = Math.round(bar.end - bar.start);
      row.append(rect);
      const words = BAR_TEXT[bar.kind](bar);
      if (w > words.length * 6.4 + 8) {
        row.append(svgEl("text", { x: x1 + 4, y: y + laneHeight / 2 + 4, class: `tl-bar-text ${bar.kind}` }, words));
      }
      if (bar.kind === "input-wait" && bar.until && bar.until <= model.stop) {
        row.append(withTitle(svgEl("line", { x1: x(bar.until), x2: x(bar.until), y1: y + 3, y2: y + laneHeight - 3,
          class: "tl-deadline" }), `the wait for input ends ${new Date(bar.until).toLocaleString()}`));
      } else if (bar.kind === "input-wait" && bar.outcome === "waiting" && bar.until) {
        const ends = `ends ${clock(bar.until)} \u2192`;
        if (w > (words.length + ends.length) * 6.4 + 16) {
          row.append(svgEl("text", { x: x1 + w - 4, y: y + laneHeight / 2 + 4, "text-anchor": "end",
            class: "tl-bar-text input-wait" }, ends));
        }
      }
    }
    for (const mark of lane.marks) {
      const cx = x(mark.at);
      if (mark.kind === "checkpoint") {
        row.append(withTitle(svgEl("circle", { cx, cy: y + laneHeight - 7, r: 2.5, class: "tl-checkpoint" }),
          `${lane.name} checkpoint ${mark.note}`));
        continue;
      }
      const tick = withTitle(svgEl("path", {
        d: `M${cx} ${y + 8} l5 7 l-5 7 l-5 -7 z`, class: `tl-mark ${mark.kind}`,
      }), `${mark.label || mark.kind} at ${clock(mark.at)}${mark.note ? `\n${mark.note}` : ""}`);
      tick.dataset.kind = mark.kind;
      row.append(tick);
    }
    svg.append(row);
  });
  for (const seg of scale.segments.filter((s) => s.cut)) {
    const mid = (seg.x0 + seg.x1) / 2;
    const zigzag = (dx) => `M${mid + dx} ${top - 4}` + " l4 5 l-4 5".repeat(Math.ceil((height - 22 - top) / 10));
    const cut = withTitle(svgEl("g", { class: "tl-cut" }), `${seconds(seg.to - seg.from)} of waiting, drawn short`);
    for (const dx of [-4, 4]) {
      cut.append(svgEl("path", { d: zigzag(dx), class: "tl-cut-gap" }), svgEl("path", { d: zigzag(dx), class: "tl-cut-line" }));
    }
    svg.append(cut);
  }
  if (model.pivot) {
    const pivotIndex = model.lanes.findIndex((l) => l.name === model.pivot);
    const passed = model.pivotPassedAt !== null;
    const marker = svgEl("g", { class: `tl-pivot${passed ? " passed" : ""}` });
    marker.dataset.passed = String(passed);
    marker.dataset.step = model.pivot;
    if (passed) {
      const px = x(model.pivotPassedAt);
      marker.dataset.at = new Date(model.pivotPassedAt).toISOString();
      marker.append(withTitle(svgEl("line", { x1: px, x2: px, y1: top - 6, y2: height - 22 }),
        `point of no return: ${model.pivot} succeeded at ${clock(model.pivotPassedAt)}; from here the saga only goes forward`));
      const anchorEnd = px > width - 150;
      marker.append(svgEl("text", { x: anchorEnd ? px - 4 : px + 4, y: top - 9, "text-anchor": anchorEnd ? "end" : "start" },
        "point of no return"));
    } else {
      marker.append(withTitle(svgEl("rect", { x: 2, y: top + pivotIndex * laneHeight + 2, width: labelWidth - 6,
        height: laneHeight - 4, rx: 3 }), `${model.pivot} is the point of no return; not passed`));
    }
    svg.append(marker);
  }
  // Saga marks that end or turn the saga get a word beside them (the last of a cluster, so words do not overlap).
  const sagaRow = model.lanes[0];
  let free = width;  // labels are placed from the right; each must end left of this
  for (const mark of [...sagaRow.marks].reverse()) {
    if (mark.kind === "recovered") continue;
    const cx = x(mark.at);
    const words = mark.label || mark.kind;
    const w = words.length * 6.2;
    const anchorEnd = cx + 8 + w > width - 4;
    const [l, r] = anchorEnd ? [cx - 8 - w, cx - 8] : [cx + 8, cx + 8 + w];
    if (r > free - 6 || l < labelWidth) continue;
    svg.append(svgEl("text", { x: anchorEnd ? r : l, y: top + laneHeight / 2 + 4,
      "text-anchor": anchorEnd ? "end" : "start", class: `tl-mark-text ${mark.kind}` }, words));
    free = Math.min(l, cx - 6);
  }

  if (model.active) {
    const nx = x(Math.min(Date.now(), model.stop));
    svg.append(withTitle(svgEl("line", { x1: nx, x2: nx, y1: top - 4, y2: height - 22, class: "tl-now" }), "now"));
  }
}

// --- the last hour ----------------------------------------------------------------------------------------

const ENDED_SERIES = ["completed", "compensated", "paused", "failed"];

/** Sagas started and ended per minute: a started bar and a stacked ended bar for each minute. */
function drawHour(svg, minutes, width) {
  const left = 34;
  const right = 12;
  const top = 10;
  const plotHeight = 150;
  const height = top + plotHeight + 24;
  const slot = (width - left - right) / Math.max(minutes.length, 1);
  const peak = Math.max(1, ...minutes.map((m) => Math.max(m.started, ENDED_SERIES.reduce((n, s) => n + m[s], 0))));
  const unit = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000].find((u) => peak / u <= 4) || 10000;
  const ceiling = Math.ceil(peak / unit) * unit;
  const y = (n) => top + plotHeight - (n / ceiling) * plotHeight;
  svg.replaceChildren();
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const grid = svgEl("g", { class: "hc-grid" });
  for (let n = 0; n <= ceiling; n += unit) {
    grid.append(svgEl("line", { x1: left, x2: width - right, y1: y(n), y2: y(n) }));
    grid.append(svgEl("text", { x: left - 6, y: y(n) + 4, "text-anchor": "end" }, n));
  }
  svg.append(grid);
  minutes.forEach((minute, i) => {
    const at = new Date(minute.at);
    const x0 = left + i * slot;
    const group = svgEl("g", { class: "hc-minute" });
    group.dataset.at = minute.at;
    const ended = ENDED_SERIES.filter((s) => minute[s]).map((s) => `${minute[s]} ${s}`);
    withTitle(group, `${at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}: ${minute.started} started` +
      (ended.length ? `, ${ended.join(", ")}` : ""));
    group.append(svgEl("rect", { x: x0, y: top, width: slot, height: plotHeight, class: "hc-hover" }));
    const barWidth = Math.max(1, slot / 2 - 1);
    if (minute.started) {
      const bar = svgEl("rect", { x: x0 + 0.5, y: y(minute.started), width: barWidth,
        height: y(0) - y(minute.started), class: "hc-bar started" });
      bar.dataset.series = "started";
      bar.dataset.count = minute.started;
      group.append(bar);
    }
    let base = 0;
    for (const series of ENDED_SERIES) {
      if (!minute[series]) continue;
      const bar = svgEl("rect", { x: x0 + slot / 2, y: y(base + minute[series]), width: barWidth,
        height: y(base) - y(base + minute[series]), class: `hc-bar ${series}` });
      bar.dataset.series = series;
      bar.dataset.count = minute[series];
      group.append(bar);
      base += minute[series];
    }
    if (at.getMinutes() % 10 === 0 && i < minutes.length - 3) {  // the last slots are labelled "now"
      group.append(svgEl("line", { x1: x0, x2: x0, y1: y(0), y2: y(0) + 4, class: "hc-axis" }));
      group.append(svgEl("text", { x: x0, y: height - 6, "text-anchor": "middle", class: "hc-tick" },
        at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })));
    }
    svg.append(group);
  });
  svg.append(svgEl("line", { x1: left, x2: width - right, y1: y(0), y2: y(0), class: "hc-axis" }));
  svg.append(svgEl("text", { x: width - right, y: height - 6, "text-anchor": "end", class: "hc-tick" }, "now"));
}

// --- legends ----------------------------------------------------------------------------------------------

/** A legend: for each [classes, words] a swatch drawn with the chart's own classes, then the words. */
function drawLegend(container, items) {
  container.replaceChildren(...items.map(([classes, words]) => {
    const item = document.createElement("span");
    item.className = "legend-item";
    const swatch = svgEl("svg", { width: 18, height: 12, class: "swatch" });
    swatch.append(svgEl("rect", { x: 0, y: 1, width: 18, height: 10, rx: 2, class: classes }));
    item.append(swatch, document.createTextNode(words));
    return item;
  }));
}
