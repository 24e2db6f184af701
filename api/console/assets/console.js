// The saga console: the /v1 API seen through a page. Every value from the API is put in the page as text
// (textContent), never as HTML, so a title such as "<script>" shows as itself.
"use strict";

const KEY = "saga-api-key";
const FINAL = ["completed", "compensated", "paused", "failed"];
const ACTIONS = {
  cancel: ["pending", "running", "awaiting_input"], resume: ["paused"], compensate: ["failed"], restart: ["compensated", "failed"],
};
const REWINDABLE = ["awaiting_input", "paused", "completed"];
const STATUSES = ["pending", "running", "awaiting_input", "compensating", "completed", "compensated", "paused", "failed"];
const OVERVIEW_REFRESH_MS = 10000;
const $ = (selector) => document.querySelector(selector);
let stream = null;   // the AbortController of the live view's stream
let nextCursor = null;
let refreshTimer = null;   // redraws the view shown (the front page's figures, a webhook's deliveries)
let routeTurn = 0;         // counts the views opened, so that a slow one does not start its redraws after the next
let liveTimer = null;      // moves a running saga's timeline along with the clock
const shown = { saga: null, events: [] };  // what the saga page draws its timeline from

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

// A key per input sent (crypto.randomUUID needs a secure context; an http page off localhost lacks one).
function newKey() {
  return globalThis.crypto?.randomUUID?.() ?? `console-${Date.now()}-${Math.random().toString(36).slice(2)}`;
}

function notice(message) {
  const box = $("#notice");
  box.textContent = message || "";
  box.hidden = !message;
}

async function api(path, options = {}) {
  const key = sessionStorage.getItem(KEY);
  const response = await fetch(path, {
    ...options, headers: { ...(options.headers || {}), Authorization: `Bearer ${key}` },
  });
  if (response.status === 401) {
    sessionStorage.removeItem(KEY);
    showKeyForm("That key was not accepted; enter another.");
    throw new Error("unauthorized");
  }
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) {
    const error = new Error(body?.error?.message || `HTTP ${response.status}`);
    error.status = response.status;
    error.code = body?.error?.code;  // e.g. insufficient_scope
    throw error;
  }
  return body;
}

function showKeyForm(message) {
  showSections();
  $("#forget").hidden = true;
  $("#key-form").hidden = false;
  notice(message);
}

/** Show these sections of the page (selectors) and hide every other one. */
function showSections(...shown) {
  for (const section of document.querySelectorAll("main > section")) {
    section.hidden = !shown.some((selector) => section.matches(selector));
  }
}

// A table row that opens a saga: its id as a link, then its type and its status.
function sagaRow(id, type, status) {
  const row = el("tr");
  row.dataset.id = id;
  const link = el("a", id);
  link.href = `#/saga/${id}`;
  cell(row, link);
  cell(row, type);
  cell(row, statusBadge(status));
  return row;
}

function statusBadge(status) {
  return el("span", status, `status ${status}`);
}

// A saga the API accepted but holds until its tenant has a slot free (`admitted: false`; absent means admitted).
function slotBadge(saga) {
  return saga.admitted === false ? el("span", "waiting for a slot", "badge slot") : null;
}

function cell(row, content, pre) {
  const td = el("td");
  if (content instanceof Node) td.append(content);
  else if (pre) { if (content !== null && content !== undefined) td.append(el("pre", JSON.stringify(content, null, 1))); }
  else td.textContent = content ?? "";
  row.append(td);
  return td;
}

// --- the front page: who needs an operator, counts, the last hour ------------------------------------------

function statusLink(text, params) {
  const link = el("a", text);
  link.href = `#/?${new URLSearchParams(params)}`;
  return link;
}

function renderNeeds(stats) {
  const now = new Date(stats.now).getTime();
  const rows = stats.needs_operator.map((item) => {
    const row = sagaRow(item.id, item.type, item.status);
    row.dataset.status = item.status;
    cell(row, item.reason).className = "why";
    const since = now - new Date(item.since).getTime();
    if (item.until) {
      const left = new Date(item.until).getTime() - now;
      cell(row, `asked ${seconds(since)} ago; ` + (left > 0 ? `the wait ends in ${seconds(left)}` : "the wait is over"),
        false).className = "urgent";
    } else cell(row, `${seconds(since)} ago`);
    return row;
  });
  if (!rows.length) {
    const row = el("tr");
    cell(row, "Nothing needs an operator.").colSpan = 5;
    rows.push(row);
  }
  $("#needs tbody").replaceChildren(...rows);
  const total = stats.needs_operator_total;
  $("#needs-total").textContent = total > stats.needs_operator.length ? `(${stats.needs_operator.length} of ${total})`
    : total ? `(${total})` : "";
}

function renderCounts(stats) {
  const byStatus = Object.fromEntries(STATUSES.map((s) => [s, 0]));
  const byType = new Map();
  for (const { type, status, count } of stats.counts) {
    byStatus[status] += count;
    if (!byType.has(type)) byType.set(type, Object.fromEntries(STATUSES.map((s) => [s, 0])));
    byType.get(type)[status] += count;
  }
  $("#status-tiles").replaceChildren(...STATUSES.map((status) => {
    const tile = statusLink("", { status });
    tile.className = `tile st-${status}${byStatus[status] ? "" : " zero"}`;
    tile.dataset.status = status;
    tile.append(el("b", byStatus[status]), el("span", status.replace("_", " ")));
    return tile;
  }));
  const present = STATUSES.filter((s) => byStatus[s]);
  const head = el("tr");
  for (const title of ["Type", ...present.map((s) => s.replace("_", " ")), "Total", ""]) head.append(el("th", title));
  $("#by-type thead").replaceChildren(head);
  const rows = [...byType.entries()].map(([type, counts]) => {
    const row = el("tr");
    row.dataset.type = type;
    cell(row, statusLink(type, { type }));
    for (const status of present) {
      const td = cell(row, counts[status] ? statusLink(counts[status], { status, type }) : "");
      td.className = "num";
      td.dataset.status = status;
    }
    const total = STATUSES.reduce((n, s) => n + counts[s], 0);
    cell(row, total).className = "num total";
    const bar = svgEl("svg", { width: 160, height: 12, class: "type-bar" });
    let x = 0;
    for (const status of STATUSES) {
      if (!counts[status]) continue;
      const w = (counts[status] / total) * 160;
      bar.append(withTitle(svgEl("rect", { x, y: 0, width: w, height: 12, class: `st-${status}` }),
        `${counts[status]} ${status}`));
      x += w;
    }
    cell(row, bar);
    return row;
  });
  if (!rows.length) {
    const row = el("tr");
    cell(row, "No sagas yet.").colSpan = present.length + 3;
    rows.push(row);
  }
  $("#by-type tbody").replaceChildren(...rows);
}

function renderHour(stats) {
  const svg = $("#hour-chart");
  drawHour(svg, stats.last_hour, Math.max(420, svg.parentElement.clientWidth - 4));
  const sum = (series) => stats.last_hour.reduce((n, m) => n + m[series], 0);
  $("#hour-totals").textContent = `(${["started", ...ENDED_SERIES].map((s) => `${sum(s)} ${s}`).join(", ")})`;
}

const BREAKER_STATES = { closed: "closed", open: "open", half_open: "half-open" };

// Each third party's circuit breaker: open ones first, then half-open, then closed.
function renderBreakers(page) {
  const order = { open: 0, half_open: 1, closed: 2 };
  const breakers = [...page.items].sort((a, b) => (order[a.state] ?? 3) - (order[b.state] ?? 3));
  const rows = breakers.map((breaker) => {
    const row = el("tr");
    row.dataset.breaker = breaker.name;
    row.dataset.state = breaker.state;
    cell(row, breaker.name);
    cell(row, el("span", BREAKER_STATES[breaker.state] || breaker.state, `breaker ${breaker.state}`));
    cell(row, breaker.failures).className = "num";
    const retry = breaker.state === "open" ? `retry in ${Math.ceil(breaker.retry_after)} s`
      : breaker.state === "half_open" ? (breaker.probing ? "a call is probing it" : "the next call probes it") : "";
    cell(row, retry).className = "retry";
    cell(row, breaker.opens).className = "num";
    return row;
  });
  if (!rows.length) {
    const row = el("tr");
    cell(row, "No dependency has failed yet.").colSpan = 5;
    rows.push(row);
  }
  $("#breakers tbody").replaceChildren(...rows);
}

async function renderOverview() {
  const [stats, breakers] = await Promise.all([api("/v1/stats"), api("/v1/breakers")]);
  renderNeeds(stats);
  renderCounts(stats);
  renderBreakers(breakers);
  renderHour(stats);  // last: the chart takes the width the other panels leave
}

// --- the list ----------------------------------------------------------------------------------------------

function filtersFromHash() {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  $("#f-status").value = params.get("status") || "";
  $("#f-type").value = params.get("type") || "";
  $("#f-since").value = params.get("since") || "";
  $("#f-q").value = params.get("q") || "";
  return params;
}

async function showList(append = false) {
  showSections("#overview", "#list");
  const params = filtersFromHash();
  const query = new URLSearchParams({ limit: "50" });
  if (params.get("status")) query.set("status", params.get("status"));
  if (params.get("type")) query.set("type", params.get("type"));
  if (params.get("since")) query.set("created_after", new Date(params.get("since")).toISOString());
  if (params.get("q")) query.set("idempotency_key", params.get("q"));
  if (append && nextCursor) query.set("cursor", nextCursor);
  const turn = routeTurn;
  const page = await api(`/v1/sagas?${query}`);
  if (turn !== routeTurn) return;  // another view (or other filters) opened meanwhile: its list is the one shown
  const body = $("#sagas tbody");
  if (!append) body.replaceChildren();
  for (const saga of page.items) {
    const row = sagaRow(saga.id, saga.type, saga.status);
    const slot = slotBadge(saga);
    if (slot) row.children[2].append(" ", slot);
    cell(row, `${saga.progress.done}/${saga.progress.total}`);
    cell(row, new Date(saga.created_at).toLocaleString());
    body.append(row);
  }
  if (!page.items.length && !append) {
    const row = el("tr");
    cell(row, "No saga matches.").colSpan = 5;
    body.append(row);
  }
  nextCursor = page.next_cursor;
  $("#more").hidden = !nextCursor;
}

$("#filters").addEventListener("submit", (event) => {
  event.preventDefault();
  const q = $("#f-q").value.trim();
  if (/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(q)) {
    location.hash = `#/saga/${q.toLowerCase()}`;
    return;
  }
  const params = new URLSearchParams();
  for (const [name, id] of [["status", "#f-status"], ["type", "#f-type"], ["since", "#f-since"], ["q", "#f-q"]]) {
    if ($(id).value.trim()) params.set(name, $(id).value.trim());
  }
  location.hash = `#/?${params}`;
});
$("#more").addEventListener("click", () => showList(true).catch((e) => notice(e.message)));

// --- one saga ----------------------------------------------------------------------------------------------

function duration(step) {
  if (!step.started_at || !step.finished_at) return "";
  const ms = new Date(step.finished_at) - new Date(step.started_at);
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

function renderSaga(saga) {
  if (shown.saga?.id !== saga.id) shown.events = [];
  shown.saga = saga;
  $("#d-title").textContent = `${saga.type} ${saga.id}`;
  const summary = $("#d-summary");
  summary.replaceChildren(statusBadge(saga.status));
  const slot = slotBadge(saga);
  if (slot) summary.append(" ", slot);
  summary.append(el("span", `  ${saga.progress.done}/${saga.progress.total} steps done` +
    (saga.idempotency_key ? `, idempotency key ${saga.idempotency_key}` : "") +
    (saga.cancel_requested ? ", cancel requested" : "")));
  const links = [];
  for (const [field, label] of [["restart_of", "restart of "], ["restarted_as", "restarted as "]]) {
    if (!saga[field]) continue;
    const link = el("a", saga[field]);
    link.href = `#/saga/${saga[field]}`;
    link.dataset.link = field;
    links.push(el("span", label), link, el("span", "  "));
  }
  $("#d-links").replaceChildren(...links);
  $("#d-error").textContent = saga.error || "";
  const waiting = saga.awaiting_input;
  const form = $("#d-awaiting");
  if (waiting && form.hidden) {  // a new wait: offer its fields to fill in (kept while the operator types)
    $("#d-awaiting-input").value = JSON.stringify(Object.fromEntries(waiting.fields.map((f) => [f, ""])));
  }
  form.hidden = !waiting;
  $("#d-awaiting-what").textContent = waiting ? `Awaiting input until ${new Date(waiting.until).toLocaleString()}: ` +
    `${waiting.fields.join(", ")} for step ${waiting.step} (${waiting.reason})` : "";
  // Long values (a logo in base64) are cut for the page; the API has them whole.
  $("#d-input").textContent = JSON.stringify(saga.input, (k, v) =>
    typeof v === "string" && v.length > 200 ? `${v.slice(0, 60)}... (${v.length} characters)` : v, 2);
  for (const button of document.querySelectorAll("#actions button")) {
    button.hidden = !ACTIONS[button.dataset.action].includes(saga.status) ||
      (button.dataset.action === "restart" && Boolean(saga.restarted_as));
  }
  const rewind = $("#d-rewind");
  rewind.hidden = !REWINDABLE.includes(saga.status) ||
    saga.steps.some((s) => s.kind !== "compensable" && s.status === "succeeded");
  const choices = saga.steps.map((s) => s.name);
  if ([...$("#d-rewind-to").options].map((o) => o.value).join() !== choices.join()) {
    $("#d-rewind-to").replaceChildren(...choices.map((name) => el("option", name)));
  }
  if (saga.rewinding_to) summary.append(el("span", `, rewinding to ${saga.rewinding_to}`));
  const flower = document.body.dataset.flower;
  const body = $("#steps tbody");
  body.replaceChildren();
  saga.steps.forEach((step, i) => {
    const row = el("tr");
    row.dataset.step = step.name;
    cell(row, i + 1);
    cell(row, step.name);
    cell(row, step.kind);
    cell(row, statusBadge(step.status));
    cell(row, step.attempts + (step.compensation_attempts ? ` + ${step.compensation_attempts} undo` : "") +
      (step.effect_unknown ? " (effect unknown)" : ""));
    cell(row, duration(step));
    cell(row, step.error, false).className = "error";
    cell(row, step.result, true);
    cell(row, step.checkpoint, true);
    cell(row, step.compensation_result, true);
    if (step.task_id && flower) {
      const link = el("a", "Flower");
      link.href = `${flower.replace(/\/$/, "")}/task/${encodeURIComponent(step.task_id)}`;
      link.target = "_blank";
      cell(row, link);
    } else cell(row, step.task_id ? step.task_id.slice(0, 8) : "");
    body.append(row);
  });
}

// What the timeline's legend can say, in this order; it shows the entries the drawing uses.
const GANTT_LEGEND = [
  ["attempt succeeded", "attempt that succeeded"], ["attempt retried", "attempt that failed, then retried"],
  ["attempt failed", "attempt that failed for good"], ["attempt asked", "attempt that asked for input"],
  ["retry-wait", "backoff before a retry"], ["input-wait", "waiting for input"],
  ["undo compensated", "undo (compensation)"], ["undo retried", "undo that failed, then retried"],
  ["undo failed", "undo that failed for good"], ["attempt running", "running"], ["attempt lost", "no outcome reported"],
];

function drawGantt() {
  const svg = $("#gantt-chart");
  if (!shown.saga || $("#detail").hidden) return;
  const model = timelineModel(shown.saga, shown.events, Date.now());
  drawTimeline(svg, model, Math.max(600, svg.parentElement.clientWidth - 2));
  const used = new Set(model.lanes.flatMap((l) => l.bars).map((bar) => {
    if (bar.kind === "retry-wait" || bar.kind === "input-wait") return bar.kind;
    if (bar.outcome === "running" || bar.outcome === "lost") return `attempt ${bar.outcome}`;  // one colour for both
    return `${bar.kind} ${bar.outcome}`;
  }));
  const legend = GANTT_LEGEND.filter(([kind]) => used.has(kind)).map(([kind, words]) => [`tl-bar ${kind}`, words]);
  if (model.pivot) legend.push(["tl-pivot-swatch", `point of no return (${model.pivot}${model.pivotPassedAt ? ", passed" : ", not passed"})`]);
  drawLegend($("#gantt-legend"), legend);
  $("#gantt-span").textContent = `(from ${new Date(model.start).toLocaleString()}, ` +
    (model.active ? `${seconds(Math.max(Date.now(), model.last) - model.start)} so far)`
      : `${seconds(model.last - model.start)})`);
  if (model.active && !liveTimer) liveTimer = setInterval(drawGantt, 1000);
  if (!model.active && liveTimer) { clearInterval(liveTimer); liveTimer = null; }
}

async function renderTimeline(id) {
  const list = $("#timeline");
  const items = [];
  let after = 0;
  while (after !== null) {
    const page = await api(`/v1/sagas/${id}/events?after=${after}`);
    items.push(...page.items);
    after = page.next_after;
  }
  if (shown.saga?.id === id.toLowerCase()) {
    shown.events = items;
    drawGantt();
  }
  list.replaceChildren(...items.map((event) => {
    const item = el("li");
    item.dataset.kind = event.kind;
    if (event.step) item.dataset.step = event.step;
    item.append(el("time", new Date(event.created_at).toLocaleTimeString()), " ",
      el("span", event.kind, "kind"), " ", el("span", event.step || ""), " ", el("span", eventDetail(event), "detail"));
    return item;
  }));
}

// An event's detail as the audit log shows it: in words where they say it better, else its JSON.
function eventDetail(event) {
  const detail = event.detail || {};
  if (event.kind === "step_waiting" && detail.dependency) {
    const until = detail.until ? ` until ${new Date(detail.until).toLocaleTimeString()}` : "";
    return `${detail.compensation ? "undo " : ""}waiting for ${detail.dependency} (circuit open)${until}`;
  }
  return Object.keys(detail).length ? JSON.stringify(detail) : "";
}

async function follow(id, controller) {
  // Server-Sent Events over fetch, which (unlike EventSource) can send the key as a header.
  const response = await fetch(`/v1/sagas/${id}/stream`, {
    headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY)}` }, signal: controller.signal,
  });
  if (!response.ok || !response.body) return;
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = frame.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (!data) continue;
      const saga = JSON.parse(data);
      renderSaga(saga);
      await renderTimeline(id);
      if (FINAL.includes(saga.status)) return;
    }
  }
}

async function showSaga(id) {
  showSections("#detail");
  const saga = await api(`/v1/sagas/${id}`);
  renderSaga(saga);
  await renderTimeline(id);
  if (!FINAL.includes(saga.status)) {
    stream = new AbortController();
    follow(id, stream).catch(() => {});
  }
}

for (const button of document.querySelectorAll("#actions button")) {
  button.addEventListener("click", async () => {
    const id = location.hash.split("/")[2];
    try {
      const answer = await api(`/v1/sagas/${id}/${button.dataset.action}`, { method: "POST" });
      if (answer.id !== id) { location.hash = `#/saga/${answer.id}`; return; }  // a restart: the new saga
      renderSaga(answer);
      notice(`${button.dataset.action}: asked`);
      await renderTimeline(id);
      if (!stream) { stream = new AbortController(); follow(id, stream).catch(() => {}); }
    } catch (error) {
      notice(`${button.dataset.action} refused: ${error.message}`);
    }
  });
}

$("#d-awaiting").addEventListener("submit", async (event) => {
  event.preventDefault();
  const id = location.hash.split("/")[2];
  let input;
  try {
    input = JSON.parse($("#d-awaiting-input").value);
  } catch (error) {
    notice(`input is not JSON: ${error.message}`);
    return;
  }
  try {
    const answer = await api(`/v1/sagas/${id}/input`, {
      method: "POST", body: JSON.stringify({ input }),
      headers: { "Content-Type": "application/json", "Idempotency-Key": newKey() },
    });
    renderSaga(answer);
    notice("input: sent");
    await renderTimeline(id);
  } catch (error) {
    notice(`input refused: ${error.message}`);
  }
});

$("#d-rewind").addEventListener("submit", async (event) => {
  event.preventDefault();
  const id = location.hash.split("/")[2];
  let input;
  try {
    input = JSON.parse($("#d-rewind-input").value || "{}");
  } catch (error) {
    notice(`input is not JSON: ${error.message}`);
    return;
  }
  try {
    const answer = await api(`/v1/sagas/${id}/rewind`, {
      method: "POST", body: JSON.stringify({ to: $("#d-rewind-to").value, input }),
      headers: { "Content-Type": "application/json", "Idempotency-Key": newKey() },
    });
    renderSaga(answer);
    notice("rewind: asked");
    await renderTimeline(id);
    if (!stream) { stream = new AbortController(); follow(id, stream).catch(() => {}); }
  } catch (error) {
    notice(`rewind refused: ${error.message}`);
  }
});

// --- routing -----------------------------------------------------------------------------------------------

async function showFront() {
  await Promise.all([showList(), renderOverview()]);
  return [OVERVIEW_REFRESH_MS, renderOverview];
}

// The views besides the front page: a pattern of the location's hash, and what shows the view it matches
// (webhooks.js adds its own). Showing a view may answer [ms, redraw]: redraw it that often while it is shown.
const VIEWS = [[/^#\/saga\/([0-9a-f-]{36})$/i, (match) => showSaga(match[1])]];

async function route() {
  const turn = ++routeTurn;
  if (stream) { stream.abort(); stream = null; }
  if (refreshTimer) { clearInterval(refreshTimer); refreshTimer = null; }
  if (liveTimer) { clearInterval(liveTimer); liveTimer = null; }
  shown.saga = null;
  if (!sessionStorage.getItem(KEY)) { showKeyForm(""); return; }
  $("#key-form").hidden = true;
  $("#forget").hidden = false;
  notice("");
  const view = VIEWS.map(([pattern, show]) => [location.hash.match(pattern), show]).find(([match]) => match);
  try {
    const refresh = view ? await view[1](view[0]) : await showFront();
    if (refresh && turn === routeTurn) {
      // Only while the tab is in view: a tab left open in the background costs the ledger nothing.
      const [ms, redraw] = refresh;
      refreshTimer = setInterval(() => {
        if (!document.hidden) redraw().catch((e) => { if (e.message !== "unauthorized") notice(e.message); });
      }, ms);
    }
  } catch (error) {
    if (error.message !== "unauthorized") notice(error.message);
  }
}

$("#key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("#key").value.trim());
  $("#key").value = "";
  route();
});
$("#forget").addEventListener("click", () => { sessionStorage.removeItem(KEY); route(); });
window.addEventListener("hashchange", route);
window.addEventListener("resize", () => {
  if (!$("#detail").hidden) drawGantt();
});
drawLegend($("#hour-legend"), [["hc-bar started", "started"], ...ENDED_SERIES.map((s) => [`hc-bar ${s}`, s])]);
// Once every script of the page has run (the ones after this one add their views).
document.addEventListener("DOMContentLoaded", route);
