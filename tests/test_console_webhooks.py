"""The console's webhooks, driven in headless Chromium against a real API, real workers (one on the `webhooks`
queue) and a real HTTP receiver: endpoints registered, listed, rotated, disabled, enabled, replayed and deleted
from the page, and a delivery's answer shown on its endpoint's page. Screenshots go to .saga/test*/artifacts/."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait
from sqlalchemy import text
from standardwebhooks import Webhook

from api import keys as apikeys
from saga import db
from saga.testing import Stack, wait_until
from tests import test_console as console
from tests.receivers import Receiver
from tests.test_audit import held
from tests.test_console import click, ended, open_console, screenshot, start, texts
from webhooks.events import EVENT_TYPES

# The console tests' browser (one per module) and tenant (its own key and an API client with it).
browser = console.browser
tenant = console.tenant

SAGA_TYPES = [t for t in EVENT_TYPES if t.startswith("saga.")]
INJECTED = '<script>window.pwned=1</script><img src=x onerror="window.pwned=1"><b id="injected">orders</b> & "x"'


def notice(browser: WebDriver) -> str:
    return texts(browser, "#notice")[0]


def says(browser: WebDriver, *words: str, timeout: float = 10) -> str:
    """Wait for the notice to say all of `words`; the notice."""
    WebDriverWait(browser, timeout).until(lambda b: all(w in notice(b) for w in words),
                                          f"the notice does not say {words}")
    return notice(browser)


def displayed(browser: WebDriver, selector: str) -> bool:
    return bool(browser.execute_script(
        "const e = document.querySelector(arguments[0]); return Boolean(e && e.offsetParent !== null)", selector))


def listed(browser: WebDriver) -> dict[str, dict[str, str]]:
    """The endpoints table as drawn: by id, each cell's text by its class."""
    return browser.execute_script("""
        return Object.fromEntries([...document.querySelectorAll('#wh-endpoints tbody tr[data-id]')].map(r => [
            r.dataset.id, Object.fromEntries([...r.cells].map(c => [c.classList[0], c.textContent]))]))""")


def register(browser: WebDriver, url: str, description: str = "", types: list[str] | None = None) -> None:
    """Fill in the register form of the webhooks view (shown) and send it; `types` replaces the checked ones."""
    WebDriverWait(browser, 10).until(lambda b: texts(b, "#wh-types input", "value"), "no event types to choose")
    if types is not None:
        for box in browser.find_elements(By.CSS_SELECTOR, "#wh-types input"):
            if box.is_selected() != (box.get_attribute("value") in types):
                box.click()
    for field, value in (("wh-url", url), ("wh-description", description)):
        browser.find_element(By.ID, field).clear()
        browser.find_element(By.ID, field).send_keys(value)
    click(browser, "#wh-create button")


def secret_shown(browser: WebDriver) -> str:
    """The signing secret the endpoint's page shows (it must show one)."""
    WebDriverWait(browser, 10).until(lambda b: displayed(b, "#wh-secret"), "no secret shown")
    return texts(browser, "#wh-secret-value")[0]


def endpoint_page(browser: WebDriver) -> str:
    """Wait for an endpoint's page; its id."""
    WebDriverWait(browser, 10).until(lambda b: "#/webhooks/" in b.current_url and displayed(b, "#wh-title"),
                                     "no endpoint page")
    return browser.current_url.rsplit("/", 1)[-1]


def attempts(browser: WebDriver) -> list[dict[str, str]]:
    """The recent deliveries table as drawn, newest first."""
    return browser.execute_script("""
        return [...document.querySelectorAll('#wh-attempts tbody tr[data-webhook-id]')].map(r => ({
            webhook_id: r.dataset.webhookId, status_code: r.dataset.statusCode || null,
            cells: [...r.cells].map(c => c.textContent), saga: r.querySelector('td.saga a').getAttribute('href')}))""")


def test_register_see_the_secret_once_see_it_listed_disable_enable_and_delete_with_a_confirmation(
    api: Any, browser: WebDriver, tenant: tuple[str, httpx.Client],
) -> None:
    key, client = tenant
    open_console(browser, api, key)
    click(browser, "#nav-webhooks")
    WebDriverWait(browser, 10).until(lambda b: displayed(b, "#wh-create"))
    assert texts(browser, "#wh-endpoints tbody td") == ["No webhook endpoints yet: register one below."]
    # Every event type the API takes, as a checkbox (read from its OpenAPI document, so they may come a moment
    # after the form); checked, the ones an endpoint gets by default.
    WebDriverWait(browser, 10).until(lambda b: texts(b, "#wh-types input", "value") == list(EVENT_TYPES))
    checked = browser.execute_script("return [...document.querySelectorAll('#wh-types input:checked')].map(e => e.value)")
    assert checked == SAGA_TYPES

    register(browser, "http://10.1.2.3/hooks")  # a private address: the API's refusal is shown
    assert "public" in says(browser, "register refused")
    assert client.get("/v1/webhooks").json()["items"] == []

    url = 'http://127.0.0.1:9/hooks?tag=<b id="injected-url">x</b>'
    register(browser, url, INJECTED, types=["saga.completed", "step.failed"])
    made = endpoint_page(browser)
    secret = secret_shown(browser)
    assert secret.startswith("whsec_") and "shown only now" in texts(browser, "#wh-secret")[0]
    assert texts(browser, "#wh-title") == [url]
    assert texts(browser, "#wh-description-text") == [f"Description: {INJECTED}"]
    assert texts(browser, "#wh-types-text") == ["Event types: saga.completed, step.failed"]
    screenshot(browser, "console-webhook-registered")
    [endpoint] = client.get("/v1/webhooks").json()["items"]
    assert (endpoint["id"], endpoint["url"], endpoint["description"]) == (made, url, INJECTED)
    # Text from the API is shown as text, never run.
    assert browser.find_elements(By.ID, "injected") == [] and browser.find_elements(By.ID, "injected-url") == []
    assert browser.execute_script("return window.pwned === undefined")

    # Once: not after a reload, nor on coming back to the page.
    browser.refresh()
    endpoint_page(browser)
    assert not displayed(browser, "#wh-secret") and secret not in browser.page_source
    click(browser, 'a[href="#/webhooks"]')
    WebDriverWait(browser, 10).until(lambda b: made in listed(b))
    assert listed(browser)[made] == {"url": url, "description": INJECTED, "types": "saga.completed, step.failed",
                                     "state": "enabled", "pending": "0", "failed": "0"}
    assert secret not in browser.page_source
    screenshot(browser, "console-webhooks")

    click(browser, f'#wh-endpoints tr[data-id="{made}"] a')
    endpoint_page(browser)
    assert not displayed(browser, "#wh-secret")
    assert displayed(browser, '#wh-actions [data-action="disable"]')
    assert not displayed(browser, '#wh-actions [data-action="enable"]')
    click(browser, '#wh-actions [data-action="disable"]')
    WebDriverWait(browser, 10).until(lambda b: texts(b, "#wh-summary .wh-state") == ["disabled disabled by the tenant"])
    assert displayed(browser, '#wh-actions [data-action="enable"]')
    assert client.get(f"/v1/webhooks/{made}").json()["enabled"] is False
    click(browser, 'a[href="#/webhooks"]')
    WebDriverWait(browser, 10).until(lambda b: listed(b).get(made, {}).get("state") == "disabled disabled by the tenant")
    assert texts(browser, f'#wh-endpoints tr[data-id="{made}"]', "data-enabled") == ["false"]
    click(browser, f'#wh-endpoints tr[data-id="{made}"] a')
    endpoint_page(browser)
    click(browser, '#wh-actions [data-action="enable"]')
    WebDriverWait(browser, 10).until(lambda b: texts(b, "#wh-summary .wh-state") == ["enabled"])
    assert client.get(f"/v1/webhooks/{made}").json()["enabled"] is True

    # Delete asks first; keeping it keeps it.
    click(browser, '#wh-actions [data-action="delete"]')
    WebDriverWait(browser, 10).until(lambda b: displayed(b, "#wh-confirm-delete"))
    click(browser, "#wh-delete-no")
    WebDriverWait(browser, 10).until(lambda b: not displayed(b, "#wh-confirm-delete"))
    assert client.get(f"/v1/webhooks/{made}").status_code == 200
    click(browser, '#wh-actions [data-action="delete"]')
    click(browser, "#wh-delete-yes")
    WebDriverWait(browser, 10).until(lambda b: b.current_url.endswith("#/webhooks") and displayed(b, "#wh-create"))
    assert "deleted the webhook endpoint" in says(browser, url)
    WebDriverWait(browser, 10).until(lambda b: made not in listed(b))
    assert client.get(f"/v1/webhooks/{made}").status_code == 404


def test_a_delivery_shows_on_its_endpoints_page_and_rotate_replay_failed_and_replay_from_the_saga_page_send_again(
    api: Any, deliverers: Stack, receiver: Receiver, browser: WebDriver, tenant: tuple[str, httpx.Client],
) -> None:
    key, client = tenant
    open_console(browser, api, key, "#/webhooks")
    register(browser, receiver.url, "orders service")
    made = endpoint_page(browser)
    secret = secret_shown(browser)
    click(browser, "#wh-secret-done")
    assert texts(browser, "#wh-attempts tbody td") == ["No delivery attempted yet."]

    answers = iter([503])  # the receiver is down for the first attempt, then answers 200
    receiver.answer = lambda: next(answers, 200)
    saga_id = start(client, "demo", {"customer": "ann", "amount_cents": 1200, "step_seconds": 0})
    assert ended(client, saga_id)["status"] == "completed"
    # The page refreshes itself: each attempt's answer appears without a reload, newest first.
    WebDriverWait(browser, 60).until(lambda b: [a["status_code"] for a in attempts(b)] == ["200", "503"],
                                     "the delivery's 503, then its 200, are not shown")
    [first] = receiver.delivered()
    payload = Webhook(secret).verify(first.body, first.headers)  # the secret the page showed signs it
    assert payload["type"] == "saga.completed" and payload["data"]["saga"]["id"] == saga_id
    for row, code in zip(attempts(browser), ("200", "503"), strict=True):
        assert row["webhook_id"] == first.headers["webhook-id"] and row["saga"] == f"#/saga/{saga_id}"
        when, kind, saga_cell, webhook_id, result, took, delivery = row["cells"]
        assert (kind, saga_cell, webhook_id, result, delivery) == (
            "saga.completed", saga_id, first.headers["webhook-id"], code, "delivered")
        assert when and took.endswith(" ms") and float(took.split()[0]) >= 0
    assert texts(browser, "#wh-attempts td.result", "class") == ["result ok", "result error"]

    # A new secret, shown once; the old one signs too for the time chosen.
    Select(browser.find_element(By.ID, "wh-keep-old")).select_by_visible_text("an hour")
    click(browser, '#wh-actions [data-action="rotate-secret"]')
    WebDriverWait(browser, 10).until(lambda b: displayed(b, "#wh-secret") and texts(b, "#wh-secret-value")[0] != secret)
    rotated = secret_shown(browser)
    assert rotated.startswith("whsec_") and "for an hour" in texts(browser, "#wh-secret-what")[0]
    assert "shown only now" in texts(browser, "#wh-secret")[0]

    # A delivery given up on (as after the retry period), replayed from the endpoint's page.
    with db.transaction() as conn:
        conn.execute(text("UPDATE webhook_deliveries SET status = 'failed' WHERE endpoint_id = :id"), {"id": made})
    WebDriverWait(browser, 20).until(lambda b: "1 failed" in texts(b, "#wh-summary")[0], "the failed count")
    click(browser, '#wh-actions [data-action="replay-failed"]')
    says(browser, "replay failed events: 1 delivery queued")
    wait_until(lambda: len(receiver.delivered()) == 2, timeout=30, what="the failed event delivered again")
    again = receiver.delivered()[1]
    assert again.headers["webhook-id"] == first.headers["webhook-id"]
    for signer in (secret, rotated):  # signed with both secrets while the old one still signs
        Webhook(signer).verify(again.body, again.headers)
    WebDriverWait(browser, 30).until(lambda b: [a["status_code"] for a in attempts(b)] == ["200", "200", "503"])

    # From the saga's page (the delivery links to it): replay its events.
    click(browser, "#wh-attempts td.saga a")
    WebDriverWait(browser, 20).until(lambda b: texts(b, "#d-summary .status") == ["completed"])
    click(browser, "#d-replay-webhooks")
    says(browser, "replay webhooks: 1 delivery queued")
    wait_until(lambda: len(receiver.delivered()) == 3, timeout=30, what="the saga's event delivered again")
    assert receiver.delivered()[2].headers["webhook-id"] == first.headers["webhook-id"]
    Webhook(rotated).verify(receiver.delivered()[2].body, receiver.delivered()[2].headers)
    browser.get(f"{api.url}/ui#/webhooks/{made}")
    WebDriverWait(browser, 30).until(lambda b: [a["status_code"] for a in attempts(b)] == ["200"] * 3 + ["503"])
    assert Select(browser.find_element(By.ID, "wh-keep-old")).first_selected_option.text == "the service's default"
    assert not displayed(browser, "#wh-secret") and rotated not in browser.page_source
    screenshot(browser, "console-webhook-deliveries")

    # With no enabled endpoint, nothing is queued, and the page says so.
    client.post(f"/v1/webhooks/{made}/disable").raise_for_status()
    browser.get(f"{api.url}/ui#/saga/{saga_id}")
    WebDriverWait(browser, 20).until(lambda b: texts(b, "#d-summary .status") == ["completed"])
    click(browser, "#d-replay-webhooks")
    says(browser, "replay webhooks: nothing queued")


def test_a_key_without_the_webhooks_scope_is_told_so(api: Any, browser: WebDriver) -> None:
    tenant = f"ui-{uuid.uuid4().hex[:10]}"
    _, key = apikeys.create_key(tenant, scopes=["sagas:read", "sagas:operate"])
    open_console(browser, api, key, "#/webhooks")
    assert "lacks the scope webhooks:manage" in says(browser, "webhooks:")
    assert displayed(browser, "#webhooks") and not displayed(browser, "#wh-create")
    saga_id = held(tenant, "pending")
    browser.get(f"{api.url}/ui#/saga/{saga_id}")
    WebDriverWait(browser, 20).until(lambda b: texts(b, "#d-summary .status") == ["pending"])
    click(browser, "#d-replay-webhooks")
    assert "lacks the scope webhooks:manage" in says(browser, "replay webhooks refused")
