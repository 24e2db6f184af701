"""Per-tenant limits on sagas in flight (`saga.tenant_slots`): a tenant at its limit gets its next sagas held
`pending` (not dispatched, no deadline, out of recovery's sight), and they start oldest first as its sagas end;
other tenants never wait behind them."""

from __future__ import annotations

import itertools
import json
import math
import re
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import pytest
from sqlalchemy import text

import saga
from saga import compensation, db, metrics, recovery, store, tenant_slots, versions
from saga.errors import VersionNotDeclared
from saga.settings import get_settings
from saga.states import ACTIVE
from saga.testing import Process, Stack, wait_for_status, wait_until
from tests.test_api import serve

# The tenant limits of the workers and beat the real-worker tests start, and of this process while those run: a
# default for every tenant, and one tenant of its own with a single slot.
BURST_LIMIT = 20
ONE_SLOT = f"one-slot-{uuid4().hex[:8]}"
WORKER_LIMITS = {"SAGA_TENANT_MAX_ACTIVE": str(BURST_LIMIT), "SAGA_TENANT_LIMITS": json.dumps({ONE_SLOT: 1})}
# Two worker processes of two pool processes each, on the `slots` queue.
WORKERS, CONCURRENCY = 2, 2


@pytest.fixture()
def limits(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Set this process's tenant limits (what its starts, ends and recovery passes go by), as its environment
    would: a default (None: no limit) and per tenant."""

    def set_limits(default: int | None, per_tenant: dict[str, int] | None = None) -> None:
        if default is None:
            monkeypatch.delenv("SAGA_TENANT_MAX_ACTIVE", raising=False)
        else:
            monkeypatch.setenv("SAGA_TENANT_MAX_ACTIVE", str(default))
        monkeypatch.setenv("SAGA_TENANT_LIMITS", json.dumps(per_tenant or {}))
        get_settings.cache_clear()

    yield set_limits
    monkeypatch.undo()
    get_settings.cache_clear()


class Sent(Sequence[UUID]):
    """The sagas whose first step's message reached the real broker since the test began, in the order sent:
    `probe_idle`'s queue, `nobody`, has no worker, so its messages stay there (Redis pushes each at the head)."""

    def __init__(self, stack: Stack) -> None:
        self._redis = stack.redis()
        self._before = self._redis.llen("nobody")

    def _ids(self) -> list[UUID]:
        new = self._redis.llen("nobody") - self._before
        raw = self._redis.lrange("nobody", 0, new - 1) if new > 0 else []
        return [UUID(re.search(r"[0-9a-f-]{36}", json.loads(m)["headers"]["argsrepr"])[0]) for m in reversed(raw)]

    def __getitem__(self, index: Any) -> Any:
        return self._ids()[index]

    def __len__(self) -> int:
        return len(self._ids())

    def __eq__(self, other: object) -> bool:
        return self._ids() == other

    def __repr__(self) -> str:
        return repr(self._ids())


@pytest.fixture()
def sent(stack: Stack) -> Sent:
    return Sent(stack)


@pytest.fixture()
def no_beat(stack: Stack) -> Stack:
    """No recovery but the passes a test runs itself: beat's, without the test's limits, would admit its held
    sagas. (The next test that needs beat starts it again.)"""
    stop_beat(stack)
    return stack


def stop_beat(stack: Stack) -> None:
    for process in [p for p in stack.processes if p.name == "beat"]:
        process.stop()
        stack.processes.remove(process)


@pytest.fixture()
def tenants() -> Iterator[Callable[[str], str]]:
    """Fresh tenant names; their sagas still active at the end are retired, out of later tests' way."""
    made: list[str] = []

    def make(label: str) -> str:
        made.append(f"{label}-{uuid4().hex[:8]}")
        return made[-1]

    yield make
    with db.transaction() as conn:
        conn.execute(text("UPDATE sagas SET status = 'compensated', deadline = NULL, admitted = true "
                          "WHERE tenant = ANY(CAST(:t AS text[])) AND status = ANY(CAST(:active AS text[]))"),
                     {"t": made, "active": list(ACTIVE)})


def start(tenant: str, type_name: str = "probe_idle", **input_data: Any) -> UUID:
    return saga.start(type_name, input_data, tenant=tenant, idempotency_key=str(uuid4())).saga.id


def ledger(ids: Iterable[UUID]) -> list[dict[str, Any]]:
    """Each saga's status, admission and deadline as the ledger holds them, in the order of `ids`."""
    ids = list(ids)
    with db.transaction() as conn:
        rows = {r["id"]: dict(r) for r in conn.execute(
            text("SELECT id, status, admitted, deadline FROM sagas WHERE id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": [str(i) for i in ids]}).mappings()}
    return [rows[i] for i in ids]


def admitted(ids: Iterable[UUID]) -> list[bool]:
    return [r["admitted"] for r in ledger(ids)]


def events(saga_id: UUID, kind: str) -> list[saga.Event]:
    return [e for e in saga.events(saga_id) if e.kind == kind]


def end(saga_id: UUID) -> None:
    """End a `probe_idle` saga as its workers would (nothing reads its queues): a cancel, then the task that
    finishes its compensation."""
    saga.cancel(saga_id)
    compensation.finish(saga_id)
    assert store.load(saga_id).status == "compensated"


def test_a_tenant_at_its_limit_waits_pending_and_its_sagas_start_in_order(
        no_beat: Stack, limits: Callable[..., None], sent: Sent, tenants: Callable[[str], str]) -> None:
    a, b = tenants("a"), tenants("b")
    limits(3)
    ids = [start(a) for _ in range(5)]
    rows = ledger(ids)
    assert [r["status"] for r in rows] == ["pending"] * 5
    assert [r["admitted"] for r in rows] == [True, True, True, False, False]
    assert [r["deadline"] is None for r in rows] == [False, False, False, True, True]
    assert sent == ids[:3]
    held = store.load(ids[3])
    assert held.admitted is False and held.to_dict()["admitted"] is False

    # Recovery leaves a held saga alone, even asked about it by id: it waits for a slot, it is not stuck.
    recovery.run_once()
    recovery.advance(ids[3])
    assert ledger(ids[3:]) == rows[3:] and sent == ids[:3]
    assert not events(ids[3], "recovered")
    # Nor does the age of the oldest unfinished saga, which a stuck-saga alert watches, count them.
    with db.engine().connect() as conn, conn.begin() as tx:
        conn.execute(text("UPDATE sagas SET created_at = now() - interval '1 year' WHERE id = ANY(CAST(:ids AS uuid[]))"),
                     {"ids": [str(i) for i in ids[3:]]})
        ages = metrics.oldest_unfinished(conn)
        tx.rollback()
    assert ages.get("pending", 0) < 30 * 86400

    # Another tenant does not wait behind a's held sagas.
    others = [start(b) for _ in range(3)]
    assert admitted(others) == [True] * 3 and sent == ids[:3] + others

    # As a's sagas end, the held ones start, oldest first: one compensated, then one paused (its version gone).
    end(ids[1])
    assert admitted(ids[3:]) == [True, False] and sent[-1] == ids[3]
    assert ledger([ids[3]])[0]["deadline"] is not None
    waited = events(ids[3], "saga_admitted")[0].detail["waited_seconds"]
    assert waited > 0
    assert versions.stop(store.load(ids[0]), VersionNotDeclared("declared no more"))
    assert store.load(ids[0]).status == "paused"
    assert admitted(ids[4:]) == [True] and sent[-1] == ids[4]
    end(ids[2])  # nothing left to admit
    assert sent == ids[:3] + others + ids[3:]
    print(f"\n  tenant {a}: 3 admitted, 2 held; the first held one started after waiting {waited:.3f} s")


def test_a_tenant_s_own_limit_overrides_the_default(
        no_beat: Stack, limits: Callable[..., None], sent: Sent, tenants: Callable[[str], str]) -> None:
    small, big, other = tenants("small"), tenants("big"), tenants("other")
    limits(2, {small: 1, big: 4})
    started = {t: [saga.start("probe_idle", {}, tenant=t, idempotency_key=str(uuid4())).saga for _ in range(5)]
               for t in (small, big, other)}
    assert {t: sum(r.admitted for r in records) for t, records in started.items()} == {small: 1, big: 4, other: 2}
    for records in started.values():
        assert admitted(r.id for r in records) == [r.admitted for r in records]
    assert len(sent) == 7


def test_without_a_limit_nothing_is_held_and_an_end_asks_the_ledger_nothing(
        no_beat: Stack, limits: Callable[..., None], sent: Sent, tenants: Callable[[str], str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    t = tenants("t")
    limits(None)
    transactions = []
    real = db.transaction

    def counted(*args: Any, **kwargs: Any) -> Any:
        transactions.append(args)
        return real(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(db, "transaction", counted)
        ids = [start(t) for _ in range(5)]
    assert not transactions  # each start is still its one autocommit statement
    assert admitted(ids) == [True] * 5 and sent == ids

    def no_ledger() -> None:
        pytest.fail("tenant_slots.ended queried the ledger with no limit configured")

    with monkeypatch.context() as patched:
        patched.setattr(db, "engine", no_ledger)
        tenant_slots.ended(ids[0])


def test_a_held_saga_cancelled_ends_compensated_without_running_and_frees_no_slot(
        no_beat: Stack, limits: Callable[..., None], sent: Sent, tenants: Callable[[str], str]) -> None:
    t = tenants("t")
    limits(1)
    first, held = start(t), start(t)
    assert admitted([first, held]) == [True, False]
    saga.cancel(held)
    compensation.finish(held)  # its compensation chain is only this finishing task
    record = store.load(held)
    assert record.status == "compensated" and not record.admitted
    assert {s.status for s in record.steps} == {"skipped"} and not events(held, "step_started")
    assert sent == [first]  # never dispatched
    later = start(t)  # `first` still holds the one slot: the cancel freed nothing
    assert admitted([later]) == [False] and sent == [first]
    end(first)
    assert admitted([later]) == [True] and sent == [first, later]


def test_recovery_admits_what_an_end_left_held_and_what_a_removed_limit_held(
        no_beat: Stack, limits: Callable[..., None], sent: Sent, tenants: Callable[[str], str]) -> None:
    t = tenants("t")
    limits(1)
    first, second, third = start(t), start(t), start(t)
    # `first` completes in a worker that dies before it admits the next: only the ledger knows.
    with db.transaction() as conn:
        conn.execute(text("UPDATE sagas SET status = 'completed', deadline = NULL WHERE id = :id"), {"id": first})
    recovery.run_once()
    assert admitted([second, third]) == [True, False]
    limits(None)  # the limit is removed: what it held starts at the next pass
    recovery.run_once()
    assert admitted([third]) == [True]
    assert [s for s in sent if s in (first, second, third)] == [first, second, third]


def queued_ids(stack: Stack, queue: str) -> str:
    """The raw messages waiting in a Redis queue, as one string (their headers name the saga id in `argsrepr`)."""
    return b"\n".join(stack.redis().lrange(queue, 0, -1)).decode(errors="replace")


def test_the_api_answers_a_held_saga_admitted_false_and_does_not_dispatch_it(no_beat: Stack) -> None:
    server = serve(no_beat, "api-slots", SAGA_TENANT_MAX_ACTIVE="1")
    try:
        client = server.client("alpha")
        first, held = (client.post("/v1/sagas", json={"type": "probe_idle", "input": {}},
                                   headers={"Idempotency-Key": str(uuid4())}) for _ in range(2))
        assert (first.status_code, held.status_code) == (202, 202)
        assert (first.json()["admitted"], held.json()["admitted"]) == (True, False)
        assert client.get(f"/v1/sagas/{held.json()['id']}").json()["admitted"] is False
        # The answer goes out before the dispatch: once the first saga's message is queued, the held one's would be.
        wait_until(lambda: first.json()["id"] in queued_ids(no_beat, "nobody"), timeout=10,
                   what="the admitted saga's message")
        client.get("/healthz")  # one more request through the same server, after both answers' background work
        assert held.json()["id"] not in queued_ids(no_beat, "nobody")
        assert ledger([UUID(held.json()["id"])])[0]["deadline"] is None
    finally:
        server.close()
        with db.transaction() as conn:
            conn.execute(text("UPDATE sagas SET status = 'compensated', deadline = NULL, admitted = true "
                              "WHERE tenant = ANY(CAST(:t AS text[])) AND status = ANY(CAST(:active AS text[]))"),
                         {"t": list(server.tenants.values()), "active": list(ACTIVE)})


# --- with real workers, whose settings have the limits of WORKER_LIMITS ---


@pytest.fixture(scope="module")
def slot_workers(stack: Stack) -> Iterator[list[Process]]:
    started = [stack.worker(f"slots{i}", concurrency=CONCURRENCY, queues=("slots",), env=WORKER_LIMITS)
               for i in range(1, WORKERS + 1)]
    yield started
    for process in started:
        process.stop()
        stack.processes.remove(process)


@pytest.fixture()
def slots(slot_workers: list[Process], no_beat: Stack, limits: Callable[..., None]) -> Stack:
    """The slot workers, without beat: only the ends themselves admit held sagas."""
    limits(BURST_LIMIT, {ONE_SLOT: 1})
    return no_beat


@pytest.fixture()
def slots_and_beat(slots: Stack) -> Iterator[Stack]:
    """The slot workers, and beat with their limits."""
    beat = slots.beat(env=WORKER_LIMITS)
    yield slots
    beat.stop()
    slots.processes.remove(beat)


def event_time(saga_id: UUID, kinds: Iterable[str]) -> datetime:
    return next(e.created_at for e in saga.events(saga_id) if e.kind in kinds)


def test_held_sagas_start_one_by_one_as_others_compensate_pause_and_complete(slots: Stack) -> None:
    asked = [({"fail": "a"}, "compensated"), ({"fail": "d"}, "paused"), ({}, "completed"), ({}, "completed")]
    ids = [start(ONE_SLOT, "probe_slots", **given) for given, _ in asked]
    try:
        assert admitted(ids) == [True, False, False, False]
        for saga_id, (_, status) in zip(ids, asked, strict=True):
            wait_for_status(saga_id, (status,), timeout=60)
        spans = [(event_time(saga_id, ("saga_accepted",) if i == 0 else ("saga_admitted",)),
                  event_time(saga_id, (f"saga_{status}",))) for i, (saga_id, (_, status)) in enumerate(zip(ids, asked))]
        for (_, ended), (began, _) in itertools.pairwise(spans):
            assert began >= ended  # one slot: each started only once the one before it ended
        gaps = [(began - ended).total_seconds() * 1000 for (_, ended), (began, _) in itertools.pairwise(spans)]
        print("\n  one slot: " + ", then ".join(f"{status} in {(e - s).total_seconds():.2f} s"
                                                for (s, e), (_, status) in zip(spans, asked))
              + "; each next one admitted " + ", ".join(f"{g:.0f}" for g in gaps) + " ms after the end before it")
    finally:
        with db.transaction() as conn:
            conn.execute(text("UPDATE sagas SET status = 'compensated', deadline = NULL "
                              "WHERE id = ANY(CAST(:ids AS uuid[])) AND status = ANY(CAST(:active AS text[]))"),
                         {"ids": [str(i) for i in ids], "active": list(ACTIVE)})


BURST, SMALL, PAUSE = 500, 10, 0.03


def latency(conn: Any, tenant: str) -> list[float]:
    """Seconds from accepted to completed of the tenant's completed sagas, by the ledger's clock."""
    return [r[0] for r in conn.execute(text(
        "SELECT CAST(extract(epoch FROM e.created_at - s.created_at) AS float) FROM sagas s JOIN saga_events e ON e.saga_id = s.id "
        "AND e.kind = 'saga_completed' WHERE s.tenant = :t"), {"t": tenant})]


def test_a_burst_of_one_tenant_does_not_delay_another_s_sagas_past_a_bound(slots_and_beat: Stack) -> None:
    a, b = f"burst-a-{uuid4().hex[:8]}", f"burst-b-{uuid4().hex[:8]}"
    began = time.monotonic()
    try:
        for _ in range(BURST):
            saga.start("slots_burst", {"pause": PAUSE}, tenant=a, idempotency_key=str(uuid4()))
        with db.transaction() as conn:
            a_waiting = conn.execute(text("SELECT count(*) FROM sagas WHERE tenant = :t AND status = 'pending'"),
                                     {"t": a}).scalar()
        small = [saga.start("slots_burst", {"pause": PAUSE}, tenant=b, idempotency_key=str(uuid4())).saga
                 for _ in range(SMALL)]
        assert all(r.admitted for r in small)
        peak = 0

        def b_done() -> bool:
            """Whether b's sagas all completed; meanwhile the most of a's seen in flight at once."""
            nonlocal peak
            with db.transaction() as conn:
                now = conn.execute(text(
                    "SELECT count(*) FILTER (WHERE tenant = :a AND admitted AND status = ANY(CAST(:active AS text[]))) "
                    "AS a_in_flight, count(*) FILTER (WHERE tenant = :b AND status <> 'completed') AS b_left "
                    "FROM sagas WHERE tenant IN (:a, :b)"), {"a": a, "b": b, "active": list(ACTIVE)}).mappings().one()
            peak = max(peak, now["a_in_flight"])
            return now["b_left"] == 0

        wait_until(b_done, timeout=60, interval=0.02, what=f"tenant {b}'s sagas to complete")
        assert peak <= BURST_LIMIT
        with db.transaction() as conn:
            b_latency = sorted(latency(conn, b))
            a_done = len(latency(conn, a))
            # How long one saga runs, its three steps in one task: from its first step's start to its last's end.
            run = statistics.mean(r[0] for r in conn.execute(text(
                "SELECT CAST(extract(epoch FROM max(st.finished_at) - min(st.started_at)) AS float) FROM saga_steps st "
                "JOIN sagas s ON s.id = st.saga_id WHERE s.tenant = :t AND s.status = 'completed' GROUP BY s.id"),
                {"t": a}))
        processes = WORKERS * CONCURRENCY
        # Admitted at once, b's last saga is queued behind at most the messages of a's sagas in flight (one each,
        # a saga's steps running in one task) and b's own; the worker processes take them `processes` at a time.
        model = (math.ceil((BURST_LIMIT + SMALL) / processes) + 1) * run
        bound = 2 * model + 2.0  # room for a loaded machine: two cores shared by workers, beat, this and PostgreSQL
        # Without the limit b's sagas would queue behind every saga of a not yet started.
        unlimited = (math.ceil((a_waiting + SMALL) / processes) + 1) * run
        print(f"\n  tenant B: {SMALL} sagas done within {b_latency[-1]:.2f} s of being started (median "
              f"{statistics.median(b_latency):.2f} s) while A had {a_waiting} of its {BURST} still pending; "
              f"bound {bound:.2f} s (limit {BURST_LIMIT}: ({BURST_LIMIT}+{SMALL})/{processes} processes + 1 sagas of "
              f"{run * 1000:.0f} ms, doubled, + 2 s); without the limit B would wait behind A's {a_waiting}: about "
              f"{unlimited:.1f} s. A completed {a_done} meanwhile, at most {peak} in flight at once; "
              f"{time.monotonic() - began:.1f} s in all")
        assert b_latency[-1] < bound
    finally:
        with db.transaction() as conn:  # a's held sagas are not this test's subject: out of the way
            conn.execute(text("UPDATE sagas SET status = 'compensated', admitted = true WHERE tenant = :t "
                              "AND NOT admitted AND status = 'pending'"), {"t": a})
        wait_until(lambda: not in_flight(a), timeout=60, what=f"tenant {a}'s sagas in flight to end")


def in_flight(tenant: str) -> int:
    with db.transaction() as conn:
        return int(conn.execute(text("SELECT count(*) FROM sagas WHERE tenant = :t AND status = ANY(CAST(:a AS text[]))"),
                                {"t": tenant, "a": list(ACTIVE)}).scalar() or 0)
