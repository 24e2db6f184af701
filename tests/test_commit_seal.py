"""No message can say how a step went, nor run a step out of turn. A step's task takes `commit` (the result of a
body that ran, when the ledger could not record it in time) only under the engine's seal, so a `commit` forged by
whoever can send a task (the broker, Flower's API) is refused: nothing recorded, the saga goes on by what its own
step does. And a step is claimed only once every step before it succeeded, so a message sent for a later step
runs nothing."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from typing import Any
from uuid import UUID, uuid4

from sqlalchemy import text

import saga
from saga import db
from saga.testing import Stack, wait_for_status, wait_until
from tests.probes import event_kinds, runs

FINAL = ("completed", "compensated", "paused", "failed")
# How long the charge holds in flight before it is declined: the forged commits arrive meanwhile.
HOLD = 6.0
CHARGE = "tests.probe_patient.c"
REFUSED = "refused a commit without a valid seal"


def charge_in_flight() -> saga.SagaRecord:
    """A saga whose pivot c (a charge) runs: taken under its fencing token, its body holding before it acts, and
    declined when the hold ends, as a card is."""
    record = saga.start("probe_patient", {"hold_before": {"c": HOLD}, "fail": "c"},
                        idempotency_key=str(uuid4())).saga
    wait_until(lambda: runs(record.id, "c"), timeout=30, what="the charge to start")
    return record


def forged_commit(saga_id: UUID, seal: str | None = None) -> dict[str, Any]:
    """What an attacker sends for the charge in flight: its fencing token (read here; tokens are small integers,
    easy to guess), a result saying the card was charged, and `seal` if given."""
    with db.transaction() as conn:
        token = conn.execute(text("SELECT fencing_token FROM saga_steps WHERE saga_id = :s AND name = 'c'"),
                             {"s": saga_id}).scalar_one()
    commit = {"token": token, "result": json.dumps({"step": "c", "charged": True})}
    return commit if seal is None else commit | {"seal": seal}


def guessed_seal(saga_id: UUID, commit: dict[str, Any]) -> str:
    """A seal made as the engine makes one, with a key the attacker made up."""
    message = json.dumps([str(saga_id), "c", "forward", commit["token"], commit["result"]], separators=(",", ":"))
    return hmac.new(secrets.token_bytes(32), message.encode(), hashlib.sha256).hexdigest()


def worker_logs(stack: Stack) -> str:
    return "".join(p.log_text() for p in stack.processes if p.name.startswith("w"))


def charge_status(saga_id: UUID) -> str:
    return next(s.status for s in saga.load(saga_id).steps if s.name == "c")


def assert_refused(stack: Stack, record: saga.SagaRecord, forged: int) -> None:
    """The `forged` commits were judged while the charge was still in flight, and changed nothing: the charge ran
    once (its own attempt), was declined, and the saga was undone; the ledger never recorded it as succeeded."""
    refusals = f"saga {record.id} forward c: {REFUSED}"
    wait_until(lambda: worker_logs(stack).count(refusals) >= forged or charge_status(record.id) == "succeeded",
               timeout=HOLD - 1, what="the forged commits to reach a worker")
    assert charge_status(record.id) == "running", "the forged commit ended the charge"
    final = wait_for_status(record.id, FINAL)
    assert final.status == "compensated", f"a forged commit made the declined charge succeed: {final.status}"
    charge = next(s for s in final.steps if s.name == "c")
    assert (charge.status, charge.result) == ("failed", None)
    assert "c" not in event_kinds(record.id, "step_succeeded"), "the ledger recorded the forged outcome"
    assert len(runs(record.id, "c")) == 1, "the charge's body ran other than by its own attempt"
    assert runs(record.id, "d") == [], "the saga went past its point of no return"
    assert worker_logs(stack).count(refusals) == forged, worker_logs(stack)[-3000:]


def test_a_commit_forged_on_the_broker_is_refused(workers: Stack) -> None:
    from workers.app import app

    record = charge_in_flight()
    unsealed = forged_commit(record.id)
    for commit in (unsealed, unsealed | {"seal": guessed_seal(record.id, unsealed)}):
        app.send_task(CHARGE, args=[str(record.id)], kwargs={"commit": commit}, queue="probe")
    assert_refused(workers, record, forged=2)


def test_a_ledger_without_its_seal_key_holds_steps_until_it_is_migrated(workers: Stack) -> None:
    """A worker of this release on a ledger not migrated yet runs nothing and spends no attempt: each step's
    message says what is missing and comes back, and the saga goes on once the key is there."""
    hidden = f"saga_seal_key_{uuid4().hex[:8]}"
    with db.transaction() as conn:
        conn.execute(text(f"ALTER TABLE saga_seal_key RENAME TO {hidden}"))
    try:
        worker = workers.replace_workers(kill=False)  # new processes: no key read yet
        record = saga.start("probe_tx", {}, idempotency_key=str(uuid4())).saga  # transactional: counted when it fails
        missing = f"saga {record.id} forward a: the ledger's saga_seal_key cannot be read"

        def attempts() -> list[int]:
            return [s.attempts for s in saga.load(record.id).steps]

        wait_until(lambda: worker.log_text().count(missing) >= 2 or any(attempts()), timeout=30,
                   what="the step to wait for the key")
        assert attempts() == [0, 0], "an attempt was spent on a ledger without its key"
    finally:
        with db.transaction() as conn:
            conn.execute(text(f"ALTER TABLE {hidden} RENAME TO saga_seal_key"))
    assert wait_for_status(record.id, FINAL).status == "completed"
    assert len(runs(record.id, "a")) == 1 and len(runs(record.id, "b")) == 1


def test_a_step_sent_before_the_steps_ahead_of_it_succeeded_runs_nothing(workers: Stack) -> None:
    """While the charge is in flight, a message for the last step (what would publish a posting nobody paid
    for, and complete the saga) is dropped unrun; the saga is undone when the charge is declined."""
    from workers.app import app

    record = charge_in_flight()
    app.send_task("tests.probe_patient.d", args=[str(record.id)], queue="probe")
    dropped = f"saga {record.id} forward d: refused a message for this step before the steps ahead of it succeeded"
    wait_until(lambda: dropped in worker_logs(workers) or bool(runs(record.id, "d")), timeout=HOLD - 1,
               what="the early message to reach a worker")
    assert runs(record.id, "d") == [], "the last step ran before the charge"
    assert charge_status(record.id) == "running"
    final = wait_for_status(record.id, FINAL)
    assert final.status == "compensated", final.status
    assert runs(record.id, "d") == [] and "d" not in event_kinds(record.id, "step_started")


def test_a_made_up_failure_of_a_live_attempt_records_nothing_and_the_charge_runs_once(workers: Stack) -> None:
    """A message with the live attempt's task id (tenants see it in `step_started`) that fails at once, with the
    engine's errback naming the saga, says nothing true about that attempt: the charge is not failed, nor run again."""
    from workers.app import app

    record = saga.start("probe_patient", {"hold": {"c": HOLD}}, idempotency_key=str(uuid4())).saga  # c acts, then holds
    wait_until(lambda: runs(record.id, "c"), timeout=30, what="the charge to run")
    live = next(s for s in saga.load(record.id).steps if s.name == "c")
    errback = app.signature("saga.on_error", args=(str(record.id),))
    for args in (["not-a-uuid"], [str(record.id)]):  # naming another saga, or this one with a bad argument
        app.send_task(CHARGE, args=args, kwargs={} if args[0] == "not-a-uuid" else {"bogus": 1},
                      task_id=live.task_id, queue="probe", link_error=errback)
    final = wait_for_status(record.id, FINAL)
    assert final.status == "completed", final.status
    assert len(runs(record.id, "c")) == 1, "the charge ran again"
    assert "c" not in event_kinds(record.id, "step_attempt_failed"), "a failure nobody had was recorded"
    assert next(s for s in final.steps if s.name == "c").attempts == 1


def test_made_up_failures_spend_no_attempt_of_a_step_nobody_runs(workers: Stack) -> None:
    from workers.app import app

    record = saga.start("probe_tx", {}, idempotency_key=str(uuid4()), dispatch=False).saga  # never dispatched
    errback = app.signature("saga.on_error", args=(str(record.id),))
    for _ in range(3):
        app.send_task("tests.probe_tx.a", args=["not-a-uuid"], queue="probe", link_error=errback)
    ignored = f"saga {record.id}: errback of task tests.probe_tx.a"
    wait_until(lambda: worker_logs(workers).count(ignored) >= 3, timeout=30, what="the made-up failures")
    current = saga.load(record.id)
    assert current.status == "pending" and [s.attempts for s in current.steps] == [0, 0], current
    assert runs(record.id, "a") == []


def test_an_undo_sent_out_of_turn_runs_nothing(workers: Stack) -> None:
    """A rewind undoes only from its step on: a message for the undo of a step the rewind keeps (what would delete
    the logo of a posting being rewound to its text), sent while the rewind's own undo runs, is dropped unrun."""
    from workers.app import app

    record = saga.start("probe_patient", {"ask": {"c": 120}, "hold": {"undo_b": HOLD}},
                        idempotency_key=str(uuid4())).saga
    wait_for_status(record.id, ("awaiting_input",), timeout=30)
    saga.rewind(record.id, "b", {"answer": "yes"}, idempotency_key="rewind", by={"via": "test"})
    wait_until(lambda: runs(record.id, "b", kind="undo"), timeout=30, what="the rewind's undo of b to run")
    app.send_task("tests.probe_patient.undo_a", args=[str(record.id)], queue="probe")
    dropped = f"saga {record.id} compensation a: refused a message for this undo"
    wait_until(lambda: dropped in worker_logs(workers) or bool(runs(record.id, "a", kind="undo")), timeout=HOLD - 1,
               what="the undo of a to be refused")
    final = wait_for_status(record.id, FINAL)
    assert final.status == "completed", final.status
    assert runs(record.id, "a", kind="undo") == [], "the rewind's kept step was undone"
    assert [s.status for s in final.steps] == ["succeeded"] * 4


def test_an_older_undo_sent_while_a_newer_one_is_owed_runs_nothing(workers: Stack) -> None:
    from workers.app import app

    record = saga.start("probe_patient", {"fail": "c", "hold": {"undo_b": HOLD}}, idempotency_key=str(uuid4())).saga
    wait_until(lambda: runs(record.id, "b", kind="undo"), timeout=30, what="the undo of b to run")
    app.send_task("tests.probe_patient.undo_a", args=[str(record.id)], queue="probe")
    dropped = f"saga {record.id} compensation a: refused a message for this undo"
    wait_until(lambda: dropped in worker_logs(workers) or bool(runs(record.id, "a", kind="undo")), timeout=HOLD - 1,
               what="the early undo of a to be refused")
    assert runs(record.id, "a", kind="undo") == [], "a was undone before b"
    final = wait_for_status(record.id, FINAL)
    assert final.status == "compensated", final.status
    undone = [(r[0], r[3]) for r in runs(record.id, kind="undo")]
    assert [step for step, _ in sorted(undone, key=lambda r: r[1])] == ["b", "a"], undone
