"""The saga console at /ui, driven in headless Chromium (Debian's chromium and chromedriver) against a real API,
real workers and the stand-ins. Screenshots of the front page and of sagas' timelines (with retries, awaiting
input, compensated, completed) go to .saga/test*/artifacts/ (one directory per pytest-xdist process)."""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

import saga
from api import keys as apikeys
from saga.testing import Stack, wait_until
from tests.conftest import TEST_DIR
from tests.jobs import posting
from tests.test_api import switch
from tests.test_audit import held

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
    click(browser, "#key-form button")


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


def screenshot(browser: WebDriver, name: str) -> Path:
    """The whole page as `ARTIFACTS/<name>.png` (the window grows to the page's height for it); prints the path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    size = browser.get_window_size()
    tall = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(size["width"], min(max(tall + 140, size["height"]), 4000))
    try:
        browser.save_screenshot(str(path))
    finally:
        browser.set_window_size(size["width"], size["height"])
    print(f"screenshot: {path}")
    return path


def bars(browser: WebDriver, step: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
    """The timeline's bars (of one step, of one kind), left to right, as drawn: where, how wide, and in what colour."""
    found = browser.execute_script("""
        return [...document.querySelectorAll('#gantt-chart rect.tl-bar')].map(r => ({
            step: r.dataset.step, kind: r.dataset.kind, outcome: r.dataset.outcome || null,
            attempt: r.dataset.attempt ? Number(r.dataset.attempt) : null, ms: Number(r.dataset.ms),
            x: Number(r.getAttribute('x')), width: Number(r.getAttribute('width')), fill: getComputedStyle(r).fill}))""")
    return sorted((b for b in found if (step is None or b["step"] == step) and (kind is None or b["kind"] == kind)),
                  key=lambda b: b["x"])


def drawn(browser: WebDriver, check: Any, what: str, timeout: float = 20) -> None:
    """Wait until `check(bars)` holds of the timeline as drawn (the page redraws it as the saga moves)."""
    WebDriverWait(browser, timeout).until(lambda b: check(bars(b)), f"the timeline does not show {what}")


def pivot(browser: WebDriver) -> dict[str, Any]:
    """The point-of-no-return marker: its step, whether the saga passed it, and where (x) when it did."""
    return browser.execute_script("""
        const g = document.querySelector('#gantt-chart .tl-pivot');
        const line = g && g.querySelector('line');
        return g && {step: g.dataset.step, passed: g.dataset.passed === 'true',
                     x: line ? Number(line.getAttribute('x1')) : null}""")


def outcomes(found: list[dict[str, Any]]) -> list[str]:
    return [b["outcome"] for b in found]


def click(browser: WebDriver, selector: str) -> None:
    """Click what the selector finds, finding it again if the page redrew it meanwhile (the front page refreshes)."""
    WebDriverWait(browser, 10, ignored_exceptions=(StaleElementReferenceException, NoSuchElementException)).until(
        lambda b: b.find_element(By.CSS_SELECTOR, selector).click() or True)


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
    click(browser, "#filters button")
    WebDriverWait(browser, 10).until(lambda b: rows(b) == [declined])

    browser.find_element(By.LINK_TEXT, declined).click()
    in_timeline(browser, "saga_compensated")
    assert badge(browser) == "compensated"
    assert "card declined" in texts(browser, "#d-error")[0]
    undone = texts(browser, '#timeline li[data-kind="step_compensated"]', "data-step")
    assert undone == ["charge_payment", "create_posting", "upload_logo"], "the undo is not shown newest first"
    # On the time axis: each step's attempt, then the undo bars in their own colour, newest step first.
    drawn(browser, lambda found: len([b for b in found if b["kind"] == "undo"]) == 3, "three undo bars")
    undo = bars(browser, kind="undo")
    assert [b["step"] for b in undo] == ["charge_payment", "create_posting", "upload_logo"]
    assert outcomes(undo) == ["compensated"] * 3
    # The declined card asked for another one; nobody sent one, so the wait ended and the undo began.
    assert [(b["kind"], b["outcome"]) for b in bars(browser, "charge_payment")] == [
        ("attempt", "asked"), ("input-wait", "ended"), ("undo", "compensated")]
    assert outcomes(bars(browser, "upload_logo", "attempt")) == ["succeeded"]
    assert bars(browser, "upload_logo", "attempt")[0]["x"] < undo[0]["x"], "the undo comes after the attempts"
    assert {b["fill"] for b in undo}.isdisjoint({b["fill"] for b in bars(browser, kind="attempt")})
    assert pivot(browser) == {"step": "charge_payment", "passed": False, "x": None}, "never past its point of no return"
    # The 8 s wait is drawn short (a break in the axis), so the quick undo after it stays wide enough to see.
    assert browser.execute_script("return document.querySelectorAll('#gantt-chart .tl-cut').length") == 1
    [wait] = bars(browser, "charge_payment", "input-wait")
    span = browser.execute_script("const s = document.querySelector('#gantt-chart').dataset;"
                                  "return [Date.parse(s.stop) - Date.parse(s.start), s.plot]")
    assert wait["width"] < 0.5 * wait["ms"] / span[0] * float(span[1]), (wait, span)
    screenshot(browser, "console-compensated")

    browser.get(f"{api.url}/ui#/saga/{done}")
    WebDriverWait(browser, 10).until(lambda b: badge(b) == "completed")
    WebDriverWait(browser, 10).until(lambda b: len(texts(b, "#steps tbody tr")) == 5)
    # The title is shown as the text it is, never run as HTML.
    assert json.dumps(title) in texts(browser, "#d-input")[0]
    assert browser.find_elements(By.ID, "injected") == []
    assert browser.execute_script("return window.pwned === undefined")
    drawn(browser, lambda found: len(found) == 5 and outcomes(found) == ["succeeded"] * 5, "five attempts that succeeded")
    assert pivot(browser)["passed"] is True
    screenshot(browser, "console-completed")


def test_cancel_moves_a_running_saga_and_a_refusal_is_shown(
    workers: Stack, api: Any, browser: WebDriver, tenant: tuple[str, httpx.Client],
) -> None:
    key, client = tenant
    running = start(client, "demo", {"customer": "ann", "amount_cents": 1200, "step_seconds": 4})
    open_console(browser, api, key, f"#/saga/{running}")
    WebDriverWait(browser, 20).until(lambda b: badge(b) == "running")
    click(browser, '#actions [data-action="cancel"]')
    # The page follows the saga live: the undo runs and the status changes without a reload.
    WebDriverWait(browser, 60).until(lambda b: badge(b) == "compensated")
    assert browser.find_element(By.CSS_SELECTOR, '#actions [data-action="cancel"]').is_displayed() is False

    past_pivot = start(client, "demo", {"customer": "bob", "amount_cents": 1200, "step_seconds": 3})
    browser.get(f"{api.url}/ui#/saga/{past_pivot}")

    def charged(b: WebDriver) -> bool:
        return texts(b, '#steps tr[data-step="charge_card"] .status') == ["succeeded"]

    WebDriverWait(browser, 30).until(charged)
    click(browser, '#actions [data-action="cancel"]')
    WebDriverWait(browser, 10).until(lambda b: "cancel refused" in texts(b, "#notice")[0])
    assert "point of no return" in texts(browser, "#notice")[0]
    assert ended(client, past_pivot)["status"] == "completed"


def test_a_key_that_may_only_read_sees_a_saga_and_is_told_why_its_cancel_is_refused(
    api: Any, browser: WebDriver,
) -> None:
    tenant = f"ui-{uuid.uuid4().hex[:10]}"
    _, key = apikeys.create_key(tenant, scopes=["sagas:read"])
    saga_id = held(tenant, "pending")
    open_console(browser, api, key, f"#/saga/{saga_id}")
    WebDriverWait(browser, 20).until(lambda b: badge(b) == "pending")
    click(browser, '#actions [data-action="cancel"]')
    WebDriverWait(browser, 10).until(lambda b: "cancel refused" in texts(b, "#notice")[0])
    assert "lacks the scope sagas:operate" in texts(browser, "#notice")[0]
    assert saga.load(saga_id).status == "pending"


def test_resume_a_paused_saga_and_compensate_a_failed_one(
    workers: Stack, api: Any, browser: WebDriver, tenant: tuple[str, httpx.Client],
) -> None:
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
    click(browser, '#actions [data-action="resume"]')
    WebDriverWait(browser, 30).until(lambda b: badge(b) == "completed")
    in_timeline(browser, "saga_resumed")
    resumed = texts(browser, '#timeline li[data-kind="saga_resumed"] .detail')
    assert '"via":"api"' in resumed[0] and f'"key":"sha256:{apikeys.hash_key(key)[:12]}"' in resumed[0], resumed

    undo_stuck = f"undo-b-{uuid.uuid4()}"
    switch(undo_stuck, True)
    failed = start(client, "probe", {"fail": "c", "switch": {"undo_b": undo_stuck}})
    assert ended(client, failed)["status"] == "failed"
    browser.get(f"{api.url}/ui#/saga/{failed}")
    WebDriverWait(browser, 10).until(lambda b: badge(b) == "failed")
    assert shown(browser) == ["compensate", "restart"]
    switch(undo_stuck, False)
    click(browser, '#actions [data-action="compensate"]')
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
    click(browser, '#actions [data-action="restart"]')
    WebDriverWait(browser, 20).until(lambda b: f"#/saga/{declined}" not in b.current_url)
    restarted = browser.current_url.rsplit("/", 1)[-1]
    WebDriverWait(browser, 20).until(lambda b: texts(b, '#d-links a[data-link="restart_of"]') == [declined])
    assert ended(client, restarted)["restart_of"] == declined
    click(browser, '#d-links a[data-link="restart_of"]')
    WebDriverWait(browser, 20).until(lambda b: texts(b, '#d-links a[data-link="restarted_as"]') == [restarted])
    assert browser.find_element(By.CSS_SELECTOR, '#actions [data-action="restart"]').is_displayed() is False
    in_timeline(browser, "saga_restarted")


def test_a_saga_awaiting_input_shows_what_it_waits_for_and_takes_it_from_the_page(
    workers: Stack, standins: Any, api: Any, browser: WebDriver, tenant: tuple[str, httpx.Client],
) -> None:
    key, client = tenant
    standins.stripe_faults("500", 2, operation="create")  # two attempts of the charge meet a Stripe outage first
    try:
        waiting = start(client, "job_posting", posting(payment_method="pm_card_chargeDeclinedInsufficientFunds"))
        awaited = wait_until(lambda: (s := client.get(f"/v1/sagas/{waiting}").json())["status"] == "awaiting_input"
                             and s, timeout=30, what="the posting to await input")
    finally:
        standins.stripe_faults("500", 0)
    assert [s["attempts"] for s in awaited["steps"]][2] == 3
    open_console(browser, api, key, f"#/saga/{waiting}")
    WebDriverWait(browser, 30).until(lambda b: badge(b) == "awaiting_input")
    what = texts(browser, "#d-awaiting-what")[0]
    assert "payment_method for step charge_payment" in what and "insufficient_funds" in what, what
    assert browser.find_element(By.CSS_SELECTOR, '#actions [data-action="cancel"]').is_displayed()
    in_timeline(browser, "input_requested")
    # The charge retried twice after a backoff each, then asked for another card: its attempt ends there, and the
    # wait for input runs on, towards its end.
    retried = [("attempt", "retried"), ("retry-wait", None)] * 2
    drawn(browser, lambda found: [(b["kind"], b["outcome"]) for b in found if b["step"] == "charge_payment"] == [
        *retried, ("attempt", "asked"), ("input-wait", "waiting")], "the charge retrying, asking for input, waiting")
    assert browser.execute_script("return document.querySelectorAll('#gantt-chart .tl-deadline').length") == 1
    waits = {kind: {b["fill"] for b in bars(browser, kind=kind)} for kind in ("attempt", "retry-wait", "input-wait")}
    assert len(waits["input-wait"]) == 1 and waits["input-wait"].isdisjoint(waits["attempt"] | waits["retry-wait"])
    assert pivot(browser)["passed"] is False
    screenshot(browser, "console-awaiting-input")
    box = browser.find_element(By.ID, "d-awaiting-input")
    box.clear()
    box.send_keys('{"payment_method": "pm_card_visa"}')
    click(browser, "#d-awaiting button")
    WebDriverWait(browser, 60).until(lambda b: badge(b) == "completed")
    assert browser.find_element(By.ID, "d-awaiting").is_displayed() is False
    in_timeline(browser, "input_received", "saga_completed")
    assert ended(client, waiting)["input"]["payment_method"] == "pm_card_visa"
    drawn(browser, lambda found: [(b["kind"], b["outcome"]) for b in found if b["step"] == "charge_payment"] == [
        *retried, ("attempt", "asked"), ("input-wait", "received"), ("attempt", "succeeded")],
        "the wait ended by the input")
    wait, second = bars(browser, "charge_payment")[-2:]
    assert wait["x"] + wait["width"] <= second["x"] + 1, "the next attempt starts once the input came"
    assert pivot(browser)["passed"] is True and pivot(browser)["x"] >= second["x"]
    browser.refresh()  # without the notice the page showed after the input was sent
    drawn(browser, lambda found: len(found) == 11, "the whole timeline again")
    screenshot(browser, "console-input-received")


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
    click(browser, "#d-rewind button")
    WebDriverWait(browser, 60).until(lambda b: badge(b) == "completed")
    in_timeline(browser, "rewind_begun", "saga_rewound", "saga_completed")
    assert texts(browser, '#timeline li[data-kind="step_compensated"]', "data-step") == [
        "charge_payment", "create_posting"]
    assert browser.find_element(By.ID, "d-rewind").is_displayed() is False, "no rewind past the point of no return"
    assert ended(client, waiting)["input"]["title"] == "Rocket scientist"


def test_the_timeline_draws_every_attempt_and_the_backoff_between_them_and_the_point_of_no_return(
    workers: Stack, api: Any, browser: WebDriver, tenant: tuple[str, httpx.Client],
) -> None:
    key, client = tenant
    retried = start(client, "probe", {"transient": {"b": 2, "d": 1},
                                      "hold_before": {"a": 0.4, "b": 0.3, "c": 0.5, "d": 0.3}})
    done = ended(client, retried)
    assert done["status"] == "completed"
    attempts = {s["name"]: s["attempts"] for s in done["steps"]}
    assert attempts == {"a": 1, "b": 3, "c": 1, "d": 2}
    events = client.get(f"/v1/sagas/{retried}/events").json()["items"]
    backoffs = {step: [e["detail"]["retry_in"] for e in events if e["kind"] == "step_attempt_failed"
                       and e["step"] == step] for step in ("b", "d")}

    open_console(browser, api, key, f"#/saga/{retried}")
    drawn(browser, lambda found: len([b for b in found if b["kind"] == "attempt"]) == 7, "seven attempts")
    for step, count in attempts.items():  # a bar per attempt, as many as the steps table counts
        assert [b["attempt"] for b in bars(browser, step, "attempt")] == list(range(1, count + 1)), step
    assert outcomes(bars(browser, "b", "attempt")) == ["retried", "retried", "succeeded"]
    assert outcomes(bars(browser, "d", "attempt")) == ["retried", "succeeded"]
    for step in ("b", "d"):  # each backoff as long as the engine scheduled it, between the attempts it separates
        waits, tries = bars(browser, step, "retry-wait"), bars(browser, step, "attempt")
        assert len(waits) == len(backoffs[step]), step
        assert all(abs(w["ms"] - r * 1000) <= 1 for w, r in zip(waits, backoffs[step], strict=True)), (waits, backoffs)
        for wait, before, after in zip(waits, tries, tries[1:], strict=False):
            # It starts where the attempt before it ended (inside that bar, which is drawn at least 3 px wide),
            # and before the next one.
            assert before["x"] <= wait["x"] <= min(before["x"] + before["width"] + 1, after["x"]), (step, before, wait)
    colours = {kind: {b["fill"] for b in bars(browser, kind=kind)} for kind in ("attempt", "retry-wait")}
    assert colours["retry-wait"].isdisjoint(colours["attempt"]), colours
    # The point of no return: the pivot's success, after its attempt and before the step after it.
    passed = pivot(browser)
    charge, after = bars(browser, "c", "attempt")[0], bars(browser, "d", "attempt")[0]
    assert passed["step"] == "c" and passed["passed"] is True
    assert charge["x"] + charge["width"] - 1 <= passed["x"] <= after["x"] + 1, (passed, charge, after)
    assert texts(browser, '#steps tr[data-step="b"] td')[4].startswith("3")
    screenshot(browser, "console-retries")


def test_the_front_page_lists_who_needs_an_operator_first_with_counts_by_status_and_type_and_the_last_hour(
    workers: Stack, api: Any, browser: WebDriver, tenant: tuple[str, httpx.Client],
) -> None:
    key, client = tenant
    # First the wait that will be past its half by the time the others have ended (it asks for 24 s).
    soon = start(client, "probe", {"ask": {"c": 24}})
    later = start(client, "probe", {"ask": {"c": 600}})
    stuck, undo_stuck = f"d-{uuid.uuid4()}", f"undo-b-{uuid.uuid4()}"
    switch(stuck, True)
    switch(undo_stuck, True)
    try:
        completed = [start(client, "demo", {"customer": n, "amount_cents": 1200, "step_seconds": 0.2})
                     for n in ("ann", "bob")]
        completed.append(start(client, "probe", {"transient": {"b": 1}}))
        compensated = start(client, "demo", {"customer": "cy", "amount_cents": 1200, "step_seconds": 0.2,
                                             "card": "declined"})
        paused = start(client, "probe", {"switch": {"d": stuck}})
        failed = start(client, "probe", {"fail": "c", "switch": {"undo_b": undo_stuck}})
        start(client, "probe_idle", {})  # its queue has no worker: it stays pending
        statuses = [ended(client, s)["status"] for s in [*completed, compensated, paused, failed]]
    finally:
        switch(stuck, False)
        switch(undo_stuck, False)
    assert statuses == ["completed"] * 3 + ["compensated", "paused", "failed"]

    def past_half() -> bool:
        return soon in [n["id"] for n in client.get("/v1/stats").json()["needs_operator"]]

    wait_until(past_half, timeout=30, interval=0.2, what="the first wait for input to pass its half")
    open_console(browser, api, key)
    WebDriverWait(browser, 10).until(
        lambda b: texts(b, "#needs tbody tr[data-id]", "data-id") == [failed, soon, paused],
        "the operator list is not failed, then the wait past its half, then paused")
    assert texts(browser, "#needs tbody tr[data-id]", "data-status") == ["failed", "awaiting_input", "paused"]
    assert "the wait ends in" in texts(browser, f'#needs tr[data-id="{soon}"] td')[4]
    assert later not in texts(browser, "#needs tbody tr[data-id]", "data-id"), "a wait far from its half"
    tiles = dict(zip(texts(browser, "#status-tiles .tile", "data-status"), texts(browser, "#status-tiles .tile b"),
                     strict=True))
    assert tiles == {"pending": "1", "running": "0", "awaiting_input": "2", "compensating": "0", "completed": "3",
                     "compensated": "1", "paused": "1", "failed": "1"}, tiles
    by_type = {row: texts(browser, f'#by-type tr[data-type="{row}"] td.total')[0]
               for row in texts(browser, "#by-type tbody tr", "data-type")}
    assert by_type == {"demo": "3", "probe": "5", "probe_idle": "1"}, by_type
    assert texts(browser, '#by-type tr[data-type="probe"] td[data-status="failed"]') == ["1"]

    def charted(series: str) -> int:
        return sum(int(n) for n in texts(browser, f'#hour-chart rect[data-series="{series}"]', "data-count"))

    assert len(texts(browser, "#hour-chart .hc-minute", "data-at")) == 60
    assert {s: charted(s) for s in ("started", "completed", "compensated", "paused", "failed")} == {
        "started": 9, "completed": 3, "compensated": 1, "paused": 1, "failed": 1}
    # Below the figures, the list of sagas as before, newest first.
    WebDriverWait(browser, 10).until(lambda b: len(rows(b)) == 9)
    screenshot(browser, "console-front")

    # From the list to the saga: its wait for input on the time axis, with where it ends.
    click(browser, f'#needs tr[data-id="{soon}"] a')
    drawn(browser, lambda found: ("input-wait", "waiting") in [(b["kind"], b["outcome"]) for b in found],
          "the wait for input")
    assert badge(browser) == "awaiting_input"
    # A tile leads to the sagas in that status.
    browser.get(f"{api.url}/ui#/")
    click(browser, '#status-tiles .tile[data-status="paused"]')
    WebDriverWait(browser, 30).until(lambda b: rows(b) == [paused])


def test_the_front_page_shows_each_dependencys_circuit_breaker(
    api: Any, browser: WebDriver, tenant: tuple[str, httpx.Client],
) -> None:
    from tests.test_api_breakers import close_breaker, forget_breakers, open_breaker

    key, _ = tenant
    name = f"brk_console_{uuid.uuid4().hex[:8]}"  # a dependency of this test alone: five failures open it for 30 s
    open_breaker(name)
    try:
        open_console(browser, api, key)
        row = f'#breakers tr[data-breaker="{name}"]'
        WebDriverWait(browser, 10).until(lambda b: texts(b, row, "data-state") == ["open"],
                                         "the Dependencies panel does not show the breaker open")
        state, failures, retry, opens = texts(browser, f"{row} td")[1:]
        assert (state, failures, opens) == ("open", "5", "1")
        assert 1 <= int(retry.removeprefix("retry in ").removesuffix(" s")) <= 30, retry
        colour = browser.execute_script(
            "return getComputedStyle(document.querySelector(arguments[0])).backgroundColor", f"{row} .breaker")
        assert colour == "rgb(251, 213, 213)", f"an open breaker is shown red, not {colour}"
        screenshot(browser, "console-dependencies")

        close_breaker(name)
        # The front page reads the breakers again with its figures, every 10 seconds.
        WebDriverWait(browser, 20).until(lambda b: texts(b, row, "data-state") == ["closed"],
                                         "the Dependencies panel does not show the breaker closed again")
        assert texts(browser, f"{row} td")[1:] == ["closed", "0", "", "1"]
        colour = browser.execute_script(
            "return getComputedStyle(document.querySelector(arguments[0])).backgroundColor", f"{row} .breaker")
        assert colour == "rgb(214, 245, 221)", f"a closed breaker is shown green, not {colour}"
    finally:
        forget_breakers(name)


def test_a_step_waiting_for_an_open_breaker_says_so_in_the_audit_log(
    workers: Stack, api: Any, browser: WebDriver, tenant: tuple[str, httpx.Client],
) -> None:
    from tests.test_api_breakers import forget_breakers, open_breaker

    key, client = tenant
    open_breaker("brk_console_post")  # the last step's dependency: the saga is accepted, and waits past its pivot
    try:
        saga_id = start(client, "brk_console", {})
        wait_until(lambda: "step_waiting" in [e["kind"] for e in client.get(f"/v1/sagas/{saga_id}/events").json()
                                              ["items"]], timeout=30, interval=0.2, what="the step to wait")
        open_console(browser, api, key, f"#/saga/{saga_id}")
        in_timeline(browser, "step_waiting")
        waiting = '#timeline li[data-kind="step_waiting"]'
        assert texts(browser, waiting, "data-step")[:1] == ["notify"]
        detail = texts(browser, f"{waiting} .detail")[0]
        assert re.fullmatch(r"waiting for brk_console_post \(circuit open\) until \d{1,2}:\d{2}:\d{2}( [AP]M)?",
                            detail), detail
    finally:
        forget_breakers("brk_console_post")  # the step runs once its wait is over, and the saga completes
