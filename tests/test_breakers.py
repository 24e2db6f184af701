"""The circuit breaker's transitions on a clock the test moves, and the same breaker read and written through the
ledger by several callers at once (`saga.breakers`)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import text

from saga import breakers, db
from saga.breakers import Breaker, Dependency, Permit, Wait
from saga.errors import ConfigurationError
from saga.settings import configure, get_settings

T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
STRIPE = Dependency("stripe", failures=3, cooldown=10, max_cooldown=25)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def failing(breaker: Breaker, times: int, now: datetime = T0) -> Breaker:
    for n in range(times):
        breaker = breaker.failure(now, STRIPE, f"attempt-{n}")
    return breaker


def test_consecutive_failures_open_it_and_a_success_between_them_starts_the_count_again() -> None:
    two = failing(Breaker("stripe"), 2)
    assert two.phase(T0) == "closed" and two.failures == 2
    assert failing(two.success(T0, "x"), 2).phase(T0) == "closed", "the success reset the count"
    opened = failing(two, 1)
    assert opened.phase(T0) == "open" and opened.opens == 1 and opened.retry_at == at(10)


def test_while_open_no_one_calls_and_the_wait_is_until_it_half_opens() -> None:
    opened = failing(Breaker("stripe"), 3)
    same, wait = opened.admit(at(4), "a", lease=30)
    assert same == opened and wait == Wait("stripe", 6.0)
    # A call that began before it opened and fails now changes nothing: the cool-down is not stretched.
    assert opened.failure(at(5), STRIPE, "late") == opened


def test_half_open_lets_one_probe_through_at_a_time() -> None:
    opened = failing(Breaker("stripe"), 3)
    probing, wait = opened.admit(at(10), "probe", lease=30)
    assert wait is None and probing.probe_token == "probe" and probing.phase(at(10)) == "half_open"
    for other in ("b", "c"):
        again, wait = probing.admit(at(11), other, lease=30)
        assert again == probing and wait == Wait("stripe", breakers.PROBE_POLL)
    # The probe's holder died: once its lease ends another step may probe.
    taken, wait = probing.admit(at(41), "d", lease=30)
    assert wait is None and taken.probe_token == "d"


def test_the_probe_decides_its_failure_doubles_the_cool_down_up_to_the_cap() -> None:
    opened = failing(Breaker("stripe"), 3)
    probing, _ = opened.admit(at(10), "p1", lease=30)
    reopened = probing.failure(at(11), STRIPE, "p1")
    assert reopened.phase(at(11)) == "open" and reopened.cooldown == 20 and reopened.retry_at == at(31)
    assert reopened.opens == 1, "a failed probe is not a new opening"
    probing, _ = reopened.admit(at(31), "p2", lease=30)
    capped = probing.failure(at(32), STRIPE, "p2")
    assert capped.cooldown == 25 and capped.retry_at == at(57)


def test_closing_is_by_a_success_not_by_time() -> None:
    opened = failing(Breaker("stripe"), 3)
    assert opened.phase(at(3600)) == "half_open", "a day later it still only lets a probe through"
    assert opened.success(at(5), "unrelated") == opened, "a success from before it half-opened proves nothing"
    probing, _ = opened.admit(at(10), "p", lease=30)
    closed = probing.success(at(10.5), "p")
    assert closed.phase(at(10.5)) == "closed" and closed.failures == 0 and closed.opens == 1
    assert closed.admit(at(10.6), "next", lease=30) == (closed, None)


def test_dependency_settings_are_checked_and_overridden_from_the_environment() -> None:
    with pytest.raises(ValueError, match="failures must be at least 1"):
        Dependency("stripe", failures=0)
    with pytest.raises(ValueError, match="cooldown must be positive and at most max_cooldown"):
        Dependency("stripe", cooldown=60, max_cooldown=30)
    with pytest.raises(ValueError, match="dependency name 'Stripe API'"):
        breakers.names("Stripe API")
    saved = dict(get_settings().breakers)
    try:
        configure(breakers={"brk_settings": {"cooldown": 7, "failures": 3}})
        assert breakers.dependency("brk_settings") == Dependency("brk_settings", failures=3, cooldown=7)
        assert breakers.dependency("brk_never_set") == Dependency("brk_never_set")
        with pytest.raises(ConfigurationError, match="SAGA_BREAKERS.*unknown setting 'cooldown_s'"):
            configure(breakers={"brk_settings": {"cooldown_s": 7}})
    finally:
        configure(breakers=saved)


def test_admission_looks_at_the_steps_up_to_the_point_of_no_return(fresh: None) -> None:
    from workers.app import sagas

    class Nothing(BaseModel):
        pass

    shop = sagas.saga_type("brk_points", Nothing)

    def reserve(ctx: Any) -> None: ...
    def unreserve(ctx: Any) -> None: ...
    def charge(ctx: Any) -> None: ...
    def ship(ctx: Any) -> None: ...

    shop.step(reserve, depends_on="warehouse").compensate_with(unreserve)
    shop.step(charge, kind="pivot", depends_on=("stripe", "fraud"))
    shop.step(ship, kind="retriable", depends_on="carrier")
    assert breakers.before_no_return(shop) == ("warehouse", "stripe", "fraud")
    assert shop.steps[2].depends_on == ("carrier",)


@pytest.fixture()
def ledger(stack: Any) -> None:
    """The suite's ledger, with every breaker closed (the autouse fixture emptied the table)."""


def test_many_callers_at_once_count_every_failure_and_take_one_probe(ledger: None) -> None:
    """Six threads (as six pool processes would) fail at once through the ledger; then, half-open, they all ask."""
    breakers.declare("brk_shared", failures=6, cooldown=0.5, max_cooldown=1)
    try:
        start = threading.Barrier(6)
        waits: list[Wait | None] = []

        def fail(n: int) -> None:
            start.wait()
            waits.append(breakers.failed(Permit(("brk_shared",), f"t{n}", clean=False)))

        threads = [threading.Thread(target=fail, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        [state] = [s for s in breakers.states() if s.name == "brk_shared"]
        assert state.phase == "open" and state.opens == 1 and state.failures == 6, state
        assert sum(w is not None for w in waits) >= 1, "the failure that opened it knows it is open"
        with db.transaction() as conn:
            conn.execute(text("UPDATE saga_breakers SET retry_at = now() WHERE name = 'brk_shared'"))
        answers: list[Permit | Wait] = []
        asked = threading.Barrier(6)

        def ask(n: int) -> None:
            asked.wait()
            answers.append(breakers.permit(("brk_shared",), f"p{n}", lease=30))

        threads = [threading.Thread(target=ask, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        probes = [a for a in answers if isinstance(a, Permit)]
        assert len(probes) == 1, answers
        breakers.succeeded(probes[0])
        [state] = [s for s in breakers.states() if s.name == "brk_shared"]
        assert state.phase == "closed" and state.failures == 0
    finally:
        breakers.DECLARED.pop("brk_shared", None)


def test_a_saga_waiting_for_an_open_breaker_is_cancelled_at_once_and_waits_for_nothing(workers: Any) -> None:
    """Its step waits without an attempt and its saga is not stuck; a cancel undoes what was done right away, not
    once the breaker closes (five minutes later)."""
    import saga
    from tests.test_api_breakers import open_breaker

    open_breaker("brk_wait")
    with pytest.raises(saga.DependencyUnavailable, match="brk_wait is unavailable"):
        saga.start("brk_wait", {})
    configure(breaker_admission="hold")  # accepted, and held at the step that needs the third party
    try:
        started = saga.start("brk_wait", {}).saga.id
    finally:
        configure(breaker_admission="refuse")

    def events() -> list[Any]:
        return saga.events(started)

    waited = wait_for(lambda: [e for e in events() if e.kind == "step_waiting"], "the charge to wait")
    assert waited[0].step == "charge" and waited[0].detail["dependency"] == "brk_wait"
    record = saga.load(started)
    assert [s.attempts for s in record.steps] == [1, 0], "waiting used no attempt"
    with db.transaction() as conn:
        deadline = conn.execute(text("SELECT deadline - now() FROM sagas WHERE id = :id"), {"id": started}).scalar()
    assert deadline > timedelta(seconds=250), "recovery leaves it alone while the breaker is open"
    asked = datetime.now(UTC)
    saga.cancel(started)
    ended = wait_for(lambda: (r := saga.load(started)).status == "compensated" and r, "the cancel to undo it")
    took = (ended.updated_at - asked).total_seconds()
    print(f"\ncancelled while waiting for an open breaker: compensated {took:.2f} s later")
    assert took < 10, took
    assert [s.status for s in ended.steps] == ["compensated", "skipped"], "the charge never ran"


def wait_for(probe: Any, what: str) -> Any:
    from saga.testing import wait_until

    return wait_until(probe, timeout=20, interval=0.1, what=what)
