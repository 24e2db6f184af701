// The saga console: the /v1 API seen through a page. Every value from the API is put in the page as text
// (textContent), never as HTML, so a title such as "<script>" shows as itself.
"use strict";

const KEY = "saga-api-key";
const FINAL = ["completed", "compensated", "paused", "failed"];
const ACTIONS = {
  cancel: ["pending", "running", "awaiting_input"], resume: ["paused"], compensate: ["failed"], restart: ["compensated", "failed"],
};
const REWINDABLE = ["awaiting_input", "paused", "completed"];
const $ = (selector) => document.querySelector(selector);
let stream = null;   // the AbortController of the live view's stream
let nextCursor = null;

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
    throw error;
  }
  return body;
}

function showKeyForm(message) {
  for (const id of ["#list", "#detail", "#forget"]) $(id).hidden = true;
  $("#key-form").hidden = false;
  notice(message);
}

function statusBadge(status) {
  return el("span", status, `status ${status}`);
}

function cell(row, content, pre) {
  const td = el("td");
  if (content instanceof Node) td.append(content);
  else if (pre) { if (content !== null && content !== undefined) td.append(el("pre", JSON.stringify(content, null, 1))); }
  else td.textContent = content ?? "";
  row.append(td);
  return td;
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
  $("#detail").hidden = true;
  $("#list").hidden = false;
  const params = filtersFromHash();
  const query = new URLSearchParams({ limit: "50" });
  if (params.get("status")) query.set("status", params.get("status"));
  if (params.get("type")) query.set("type", params.get("type"));
  if (params.get("since")) query.set("created_after", new Date(params.get("since")).toISOString());
  if (params.get("q")) query.set("idempotency_key", params.get("q"));
  if (append && nextCursor) query.set("cursor", nextCursor);
  const page = await api(`/v1/sagas?${query}`);
  const body = $("#sagas tbody");
  if (!append) body.replaceChildren();
  for (const saga of page.items) {
    const row = el("tr");
    row.dataset.id = saga.id;
    const link = el("a", saga.id);
    link.href = `#/saga/${saga.id}`;
    cell(row, link);
    cell(row, saga.type);
    cell(row, statusBadge(saga.status));
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
  $("#d-title").textContent = `${saga.type} ${saga.id}`;
  const summary = $("#d-summary");
  summary.replaceChildren(statusBadge(saga.status),
    el("span", `  ${saga.progress.done}/${saga.progress.total} steps done` +
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

async function renderTimeline(id) {
  const list = $("#timeline");
  const items = [];
  let after = 0;
  while (after !== null) {
    const page = await api(`/v1/sagas/${id}/events?after=${after}`);
    items.push(...page.items);
    after = page.next_after;
  }
  list.replaceChildren(...items.map((event) => {
    const item = el("li");
    item.dataset.kind = event.kind;
    if (event.step) item.dataset.step = event.step;
    item.append(el("time", new Date(event.created_at).toLocaleTimeString()), " ",
      el("span", event.kind, "kind"), " ", el("span", event.step || ""), " ",
      el("span", Object.keys(event.detail || {}).length ? JSON.stringify(event.detail) : "", "detail"));
    return item;
  }));
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
  $("#list").hidden = true;
  $("#detail").hidden = false;
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

async function route() {
  if (stream) { stream.abort(); stream = null; }
  if (!sessionStorage.getItem(KEY)) { showKeyForm(""); return; }
  $("#key-form").hidden = true;
  $("#forget").hidden = false;
  notice("");
  const match = location.hash.match(/^#\/saga\/([0-9a-f-]{36})$/i);
  try {
    if (match) await showSaga(match[1]);
    else await showList();
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
route();
