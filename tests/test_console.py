"""The saga console at /ui, driven in headless Chromium (Debian's chromium and chromedriver) against a real API,
real workers and the stand-ins. Screenshots of a completed and a compensated job posting go to
.saga/test*/artifacts/ (one directory per pytest-xdist process)."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from api import keys as apikeys
from saga.testing import Stack, wait_until
from tests.conftest import TEST_DIR
from tests.jobs import posting

ARTIFACTS = TEST_DIR / "artifacts"
FINAL = ("completed", "compensated", "paused", "failed")


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("the console tests need Debian's chromium and chromium-driver (.ci/run installs them)")
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1200"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture()
def tenant(api: Any) -> Iterator[tuple[str, httpx.Client]]:
    """A tenant of its own, its key and an HTTP client of the API with it."""
    _, key = apikeys.create_key(f"ui-{uuid.uuid4().hex[:10]}")
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        yield key, client


def start(client: httpx.Client, saga_type: str, data: dict[str, Any]) -> str:
    answer = client.post("/v1/sagas", json={"type": saga_type, "input": data},
                         headers={"Idempotency-Key": str(uuid.uuid4())})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def ended(client: httpx.Client, saga_id: str) -> dict[str, Any]:
    return wait_until(lambda: (s := client.get(f"/v1/sagas/{saga_id}").json())["status"] in FINAL and s,
                      timeout=90, what=f"saga {saga_id} to end")


def open_console(browser: WebDriver, api: Any, key: str, fragment: str = "#/") -> None:
    browser.get(f"{api.url}/ui{fragment}")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    field = WebDriverWait(browser, 10).until(lambda b: b.find_element(By.ID, "key"))
    field.send_keys(key)
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()


def texts(browser: WebDriver, selector: str, attribute: str | None = None) -> list[str]:
    """The text (or an attribute) of every element the selector finds, read at one moment (the page redraws)."""
    return browser.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => arguments[1] ? e.getAttribute(arguments[1])"
        " : e.textContent)", selector, attribute)


def rows(browser: WebDriver) -> list[str]:
    return texts(browser, "#sagas tbody tr[data-id]", "data-id")


def in_timeline(browser: WebDriver, *kinds: str, timeout: float = 20) -> None:
    """Wait for these events in the timeline: the page draws a saga first and its timeline after it."""
    WebDriverWait(browser, timeout).until(lambda b: set(kinds) <= set(texts(b, "#timeline .kind")),
                                          f"{kinds} not in the timeline")


def badge(browser: WebDriver) -> str:
    found = texts(browser, "#d-summary .status")
    return found[0] if found else ""


def test_list_filter_and_a_compensated_posting_undone_newest_first(
    workers: Stack, standins: Any, api: Any, browser: WebDriver, tenant: tuple[str, httpx.Client],
) -> None:
    key, client = tenant
    title = '<img src=x onerror="window.pwned=1"><b id="injected">Rocket</b> & "engineer"'
    done = start(client, "job_posting", posting(title=title))
    declined = start(client, "job_posting", posting(payment_method="pm_card_chargeDeclined"))
    assert ended(client, done)["status"] == "completed"
    assert ended(client, declined)["status"] == "compensated"

    open_console(browser, api, key)
    WebDriverWait(browser, 10).until(lambda b: set(rows(b)) == {done, declined})
    Select(browser.find_element(By.ID, "f-status")).select_by_visible_text("compensated")
    browser.find_element(By.CSS_SELECTOR, "#filters button").click()
    WebDriverWait(browser, 10).until(lambda b: rows(b) == [declined])

    browser.find_element(By.LINK_TEXT, declined).click()
    in_timeline(browser, "saga_compensated")
    assert badge(browser) == "compensated"
    assert "card declined" in texts(browser, "#d-error")[0]
    undone = texts(browser, '#timeline li[data-kind="step_compensated"]', "data-step")
    assert undone == ["charge_payment", "create_posting", "upload_logo"], "the undo is not shown newest first"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "console-compensated.png"))

    browser.get(f"{api.url}/ui#/saga/{done}")
    WebDriverWait(browser, 10).until(lambda b: badge(b) == "completed")
    WebDriverWait(browser, 10).until(lambda b: len(texts(b, "#steps tbody tr")) == 5)
    # The title is shown as the text it is, never run as HTML.
    assert json.dumps(title) in texts(browser, "#d-input")[0]
    assert browser.find_elements(By.ID, "injected") == []
    assert browser.execute_script("return window.pwned === undefined")
    browser.save_screenshot(str(ARTIFACTS / "console-completed.png"))


def test_cancel_moves_a_running_saga_and_a_refusal_is_shown(
    workers: Stack, api: Any, browser: WebDriver, tenant: tuple[str, httpx.Client],
) -> None:
    key, client = tenant
    running = start(client, "demo", {"customer": "ann", "amount_cents": 1200, "step_seconds": 4})
    open_console(browser, api, key, f"#/saga/{running}")
    WebDriverWait(browser, 20).until(lambda b: badge(b) == "running")
    browser.find_element(By.CSS_SELECTOR, '#actions [data-action="cancel"]').click()
    # The page follows the saga live: the undo runs and the status changes without a reload.
    WebDriverWait(browser, 60).until(lambda b: badge(b) == "compensated")
    assert browser.find_element(By.CSS_SELECTOR, '#actions [data-action="cancel"]').is_displayed() is False

    past_pivot = start(client, "demo", {"customer": "bob", "amount_cents": 1200, "step_seconds": 3})
    browser.get(f"{api.url}/ui#/saga/{past_pivot}")

    def charged(b: WebDriver) -> bool:
        return texts(b, '#steps tr[data-step="charge_card"] .status') == ["succeeded"]

    WebDriverWait(browser, 30).until(charged)
    browser.find_element(By.CSS_SELECTOR, '#actions [data-action="cancel"]').click()
    WebDriverWait(browser, 10).until(lambda b: "cancel refused" in texts(b, "#notice")[0])
    assert "point of no return" in texts(browser, "#notice")[0]
    assert ended(client, past_pivot)["status"] == "completed"


def test_resume_a_paused_saga_and_compensate_a_failed_one(
    workers: Stack, api: Any, browser: WebDriver, tenant: tuple[str, httpx.Client],
) -> None:
    from tests.test_api import switch

    key, client = tenant
    stuck = f"d-{uuid.uuid4()}"
    switch(stuck, True)
    paused = start(client, "probe", {"switch": {"d": stuck}})
    assert ended(client, paused)["status"] == "paused"
    open_console(browser, api, key, f"#/saga/{paused}")
    WebDriverWait(browser, 10).until(lambda b: badge(b) == "paused")

    def shown(b: WebDriver) -> list[str]:
        return [e.get_attribute("data-action") for e in b.find_elements(By.CSS_SELECTOR, "#actions button")
                if e.is_displayed()]

    assert shown(browser) == ["resume"]
    switch(stuck, False)  # the operator fixed what made `d` fail
    browser.find_element(By.CSS_SELECTOR, '#actions [data-action="resume"]').click()
    WebDriverWait(browser, 30).until(lambda b: badge(b) == "completed")
    in_timeline(browser, "saga_resumed")

    undo_stuck = f"undo-b-{uuid.uuid4()}"
    switch(undo_stuck, True)
    failed = start(client, "probe", {"fail": "c", "switch": {"undo_b": undo_stuck}})
    assert ended(client, failed)["status"] == "failed"
    browser.get(f"{api.url}/ui#/saga/{failed}")
    WebDriverWait(browser, 10).until(lambda b: badge(b) == "failed")
    assert shown(browser) == ["compensate", "restart"]
    switch(undo_stuck, False)
    browser.find_element(By.CSS_SELECTOR, '#actions [data-action="compensate"]').click()
    WebDriverWait(browser, 30).until(lambda b: badge(b) == "compensated")
    assert texts(browser, '#steps tr[data-step="b"] .status') == ["compensated"]


def test_restart_opens_the_new_saga_and_both_pages_link_to_each_other(
    workers: Stack, api: Any, browser: WebDriver, tenant: tuple[str, httpx.Client],
) -> None:
    key, client = tenant
    declined = start(client, "demo", {"customer": "ann", "amount_cents": 1200, "step_seconds": 0, "card": "declined"})
    assert ended(client, declined)["status"] == "compensated"
    open_console(browser, api, key, f"#/saga/{declined}")
    WebDriverWait(browser, 20).until(lambda b: badge(b) == "compensated")
    browser.find_element(By.CSS_SELECTOR, '#actions [data-action="restart"]').click()
    WebDriverWait(browser, 20).until(lambda b: f"#/saga/{declined}" not in b.current_url)
    restarted = browser.current_url.rsplit("/", 1)[-1]
    WebDriverWait(browser, 20).until(lambda b: texts(b, '#d-links a[data-link="restart_of"]') == [declined])
    assert ended(client, restarted)["restart_of"] == declined
    browser.find_element(By.CSS_SELECTOR, '#d-links a[data-link="restart_of"]').click()
    WebDriverWait(browser, 20).until(lambda b: texts(b, '#d-links a[data-link="restarted_as"]') == [restarted])
    assert browser.find_element(By.CSS_SELECTOR, '#actions [data-action="restart"]').is_displayed() is False
    in_timeline(browser, "saga_restarted")


def test_a_saga_awaiting_input_shows_what_it_waits_for_and_takes_it_from_the_page(
    workers: Stack, api: Any, browser: WebDriver, tenant: tuple[str, httpx.Client],
) -> None:
    key, client = tenant
    waiting = start(client, "job_posting", posting(payment_method="pm_card_chargeDeclinedInsufficientFunds"))
    open_console(browser, api, key, f"#/saga/{waiting}")
    WebDriverWait(browser, 30).until(lambda b: badge(b) == "awaiting_input")
    what = texts(browser, "#d-awaiting-what")[0]
    assert "payment_method for step charge_payment" in what and "insufficient_funds" in what, what
    assert browser.find_element(By.CSS_SELECTOR, '#actions [data-action="cancel"]').is_displayed()
    in_timeline(browser, "input_requested")
    box = browser.find_element(By.ID, "d-awaiting-input")
    box.clear()
    box.send_keys('{"payment_method": "pm_card_visa"}')
    browser.find_element(By.CSS_SELECTOR, "#d-awaiting button").click()
    WebDriverWait(browser, 60).until(lambda b: badge(b) == "completed")
    assert browser.find_element(By.ID, "d-awaiting").is_displayed() is False
    in_timeline(browser, "input_received", "saga_completed")
    assert ended(client, waiting)["input"]["payment_method"] == "pm_card_visa"


def test_a_rewind_from_the_page_shows_in_the_timeline(
    workers: Stack, api: Any, browser: WebDriver, tenant: tuple[str, httpx.Client],
) -> None:
    key, client = tenant
    waiting = start(client, "job_posting", posting(payment_method="pm_card_chargeDeclinedInsufficientFunds"))
    open_console(browser, api, key, f"#/saga/{waiting}")
    WebDriverWait(browser, 30).until(lambda b: badge(b) == "awaiting_input")
    Select(browser.find_element(By.ID, "d-rewind-to")).select_by_visible_text("create_posting")
    box = browser.find_element(By.ID, "d-rewind-input")
    box.clear()
    box.send_keys('{"title": "Rocket scientist", "payment_method": "pm_card_visa"}')
    browser.find_element(By.CSS_SELECTOR, "#d-rewind button").click()
    WebDriverWait(browser, 60).until(lambda b: badge(b) == "completed")
    in_timeline(browser, "rewind_begun", "saga_rewound", "saga_completed")
    assert texts(browser, '#timeline li[data-kind="step_compensated"]', "data-step") == [
        "charge_payment", "create_posting"]
    assert browser.find_element(By.ID, "d-rewind").is_displayed() is False, "no rewind past the point of no return"
    assert ended(client, waiting)["input"]["title"] == "Rocket scientist"
