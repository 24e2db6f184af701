// The console's webhooks: the tenant's endpoints (register, list, one endpoint's deliveries, rotate its secret,
// disable, enable, replay, delete) and a saga's "Replay webhooks", through the /v1 API with the key's
// webhooks:manage scope. Uses console.js's helpers; like it, puts every value from the API in as text.
"use strict";

const WEBHOOKS_REFRESH_MS = 5000;  // the list's pending and failed counts, an endpoint's deliveries
const ENDPOINT_PATH = /^#\/webhooks\/([0-9a-f-]{36})$/i;
let eventTypesAsked = null;  // the event types an endpoint may subscribe to, read once from the API's OpenAPI
let freshSecret = null;      // a secret just made, for the endpoint's page to show once: { id, secret, what }
let flash = "";              // said on the next view shown (after a delete, the list)

const ACTION_WORDS = {
  "rotate-secret": "rotate secret", disable: "disable", enable: "enable", "replay-failed": "replay failed events",
};

function plural(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}

function shownEndpointId() {
  return location.hash.match(ENDPOINT_PATH)?.[1].toLowerCase() ?? null;
}

function jsonPost(body) {
  return { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } };
}

/** The first `enum` under a JSON Schema node (the item type of `event_types`, wherever the schema nests it). */
function enumIn(node) {
  if (!node || typeof node !== "object") return null;
  if (Array.isArray(node.enum)) return node.enum;
  for (const value of Object.values(node)) {
    const found = enumIn(value);
    if (found) return found;
  }
  return null;
}

/** The event types `POST /v1/webhooks` accepts, as its OpenAPI document lists them. */
function eventTypes() {
  eventTypesAsked ??= fetch("/openapi.json").then((response) => {
    if (!response.ok) throw new Error(`the event types could not be read (HTTP ${response.status})`);
    return response.json();
  }).then((doc) => {
    const found = enumIn(doc.components?.schemas?.CreateWebhook?.properties?.event_types);
    if (!found) throw new Error("the API's OpenAPI document lists no event types");
    return found;
  }).catch((error) => { eventTypesAsked = null; throw error; });
  return eventTypesAsked;
}

/** Enabled or disabled, and why it is disabled (by the tenant, a 410 from the receiver, deliveries failing). */
function endpointState(endpoint) {
  const state = el("span", "", "wh-state");
  state.append(statusBadge(endpoint.enabled ? "enabled" : "disabled"));
  if (!endpoint.enabled && endpoint.disabled_reason) state.append(el("span", ` ${endpoint.disabled_reason}`, "reason"));
  return state;
}

// --- the list and the form to register one -----------------------------------------------------------------

async function renderEndpoints() {
  const page = await api("/v1/webhooks");
  const rows = page.items.map((endpoint) => {
    const row = el("tr");
    row.dataset.id = endpoint.id;
    row.dataset.enabled = String(endpoint.enabled);
    const link = el("a", endpoint.url);
    link.href = `#/webhooks/${endpoint.id}`;
    cell(row, link).className = "url";
    cell(row, endpoint.description ?? "").className = "description";
    cell(row, endpoint.event_types.join(", ")).className = "types";
    cell(row, endpointState(endpoint)).className = "state";
    cell(row, endpoint.pending).className = "pending num";
    cell(row, endpoint.failed).className = `failed num${endpoint.failed ? " error" : ""}`;
    return row;
  });
  if (!rows.length) {
    const row = el("tr");
    cell(row, "No webhook endpoints yet: register one below.").colSpan = 6;
    rows.push(row);
  }
  $("#wh-endpoints tbody").replaceChildren(...rows);
}

async function fillEventTypes() {
  const fieldset = $("#wh-types");
  if (fieldset.querySelector("input")) return;
  const types = await eventTypes();
  const choices = types.map((type) => {
    const label = el("label", "", "choice");
    const box = el("input");
    box.type = "checkbox";
    box.value = type;
    box.defaultChecked = type.startsWith("saga.");  // what the API subscribes an endpoint to by default
    label.append(box, ` ${type}`);
    return label;
  });
  fieldset.replaceChildren(el("legend", "Event types"), ...choices);
}

async function showWebhooks() {
  $("#wh-manage").hidden = true;
  showSections("#webhooks");
  if (flash) { notice(flash); flash = ""; }
  try {
    await renderEndpoints();
  } catch (error) {
    if (error.code === "insufficient_scope") { notice(`webhooks: ${error.message}`); return null; }
    throw error;
  }
  $("#wh-manage").hidden = false;
  await fillEventTypes();
  return [WEBHOOKS_REFRESH_MS, renderEndpoints];
}

$("#wh-create").addEventListener("submit", async (event) => {
  event.preventDefault();
  const types = [...document.querySelectorAll("#wh-types input:checked")].map((box) => box.value);
  if (!types.length) { notice("register: choose at least one event type"); return; }
  const body = { url: $("#wh-url").value.trim(), event_types: types };
  const description = $("#wh-description").value.trim();
  if (description) body.description = description;
  try {
    const made = await api("/v1/webhooks", jsonPost(body));
    $("#wh-create").reset();
    freshSecret = { id: made.id, secret: made.secret, what: "Registered. Its signing secret:" };
    location.hash = `#/webhooks/${made.id}`;
  } catch (error) {
    notice(`register refused: ${error.message}`);
  }
});

// --- one endpoint ------------------------------------------------------------------------------------------

function showSecret(shown) {
  $("#wh-secret").hidden = !shown;
  $("#wh-secret-what").textContent = shown ? shown.what : "";
  $("#wh-secret-value").textContent = shown ? shown.secret : "";
}

function attemptRow(attempt) {
  const row = el("tr");
  row.dataset.webhookId = attempt.webhook_id;
  row.dataset.type = attempt.type;
  if (attempt.status_code !== null) row.dataset.statusCode = String(attempt.status_code);
  cell(row, new Date(attempt.at).toLocaleString());
  cell(row, attempt.type);
  const saga = el("a", attempt.saga_id);
  saga.href = `#/saga/${attempt.saga_id}`;
  cell(row, saga).className = "saga";
  cell(row, el("code", attempt.webhook_id));
  const ok = attempt.status_code !== null && attempt.status_code >= 200 && attempt.status_code < 300;
  // The receiver's status code, or what went wrong when there was none (a timeout, a refused address).
  const said = attempt.error && attempt.error !== `HTTP ${attempt.status_code}` ? attempt.error : null;
  const result = [attempt.status_code, said].filter((part) => part !== null).join(": ");
  cell(row, result || "no answer").className = `result ${ok ? "ok" : "error"}`;
  cell(row, `${attempt.duration_ms} ms`).className = "num";
  cell(row, statusBadge(attempt.delivery_status));
  return row;
}

/** Draw the endpoint's page; false if another view was opened while its answer came. */
async function renderWebhook(id) {
  const endpoint = await api(`/v1/webhooks/${id}`);
  if (shownEndpointId() !== id) return false;
  $("#wh-title").textContent = endpoint.url;
  $("#wh-summary").replaceChildren(endpointState(endpoint),
    el("span", `  ${endpoint.pending} pending, ${endpoint.failed} failed; registered ` +
      `${new Date(endpoint.created_at).toLocaleString()}`));
  $("#wh-description-text").textContent = endpoint.description ? `Description: ${endpoint.description}` : "";
  $("#wh-types-text").textContent = `Event types: ${endpoint.event_types.join(", ")}`;
  $('#wh-actions [data-action="disable"]').hidden = !endpoint.enabled;
  $('#wh-actions [data-action="enable"]').hidden = endpoint.enabled;
  const rows = endpoint.recent_attempts.map(attemptRow);
  if (!rows.length) {
    const row = el("tr");
    cell(row, "No delivery attempted yet.").colSpan = 7;
    rows.push(row);
  }
  $("#wh-attempts tbody").replaceChildren(...rows);
  return true;
}

async function showWebhook(id) {
  const secret = freshSecret?.id === id ? freshSecret : null;
  freshSecret = null;  // shown this once: gone on a reload or the next visit
  try {
    if (!await renderWebhook(id)) return null;
  } catch (error) {
    showSections();
    if (error.code === "insufficient_scope") { notice(`webhooks: ${error.message}`); return null; }
    throw error;
  }
  showSecret(secret);
  $("#wh-confirm-delete").hidden = true;
  $("#wh-keep-old").value = "";
  showSections("#webhook");
  return [WEBHOOKS_REFRESH_MS, () => renderWebhook(id)];
}

for (const button of document.querySelectorAll("#wh-actions button")) {
  button.addEventListener("click", async () => {
    const id = shownEndpointId();
    const action = button.dataset.action;
    if (action === "delete") { $("#wh-confirm-delete").hidden = false; return; }
    const words = ACTION_WORDS[action];
    try {
      const keep = $("#wh-keep-old");
      const options = action === "rotate-secret" && keep.value !== "" ? jsonPost({ keep_old_for: Number(keep.value) })
        : { method: "POST" };
      const answer = await api(`/v1/webhooks/${id}/${action}`, options);
      if (action === "rotate-secret") {
        showSecret({ secret: answer.secret, what: "Rotated. The new signing secret (the old one signs too for " +
          `${keep.selectedOptions[0].textContent}):` });
        notice(`${words}: done`);
      } else if (action === "replay-failed") {
        notice(answer.deliveries ? `${words}: ${plural(answer.deliveries, "delivery", "deliveries")} queued`
          : `${words}: none had failed`);
      } else notice(`${words}: done`);
      await renderWebhook(id);
    } catch (error) {
      notice(`${words} refused: ${error.message}`);
    }
  });
}

$("#wh-secret-done").addEventListener("click", () => showSecret(null));
$("#wh-delete-no").addEventListener("click", () => { $("#wh-confirm-delete").hidden = true; });
$("#wh-delete-yes").addEventListener("click", async () => {
  const id = shownEndpointId();
  try {
    await api(`/v1/webhooks/${id}`, { method: "DELETE" });
    flash = `deleted the webhook endpoint ${$("#wh-title").textContent}`;
    location.hash = "#/webhooks";
  } catch (error) {
    notice(`delete refused: ${error.message}`);
  }
});

// --- a saga's page -----------------------------------------------------------------------------------------

$("#d-replay-webhooks").addEventListener("click", async () => {
  const id = location.hash.split("/")[2];
  try {
    const answer = await api(`/v1/sagas/${id}/replay-webhooks`, { method: "POST" });
    notice(answer.deliveries
      ? `replay webhooks: ${plural(answer.deliveries, "delivery", "deliveries")} queued`
      : "replay webhooks: nothing queued (no enabled endpoint subscribes to this saga's events)");
  } catch (error) {
    notice(`replay webhooks refused: ${error.message}`);
  }
});

VIEWS.push([/^#\/webhooks\/?$/, showWebhooks], [ENDPOINT_PATH, (match) => showWebhook(match[1].toLowerCase())]);
