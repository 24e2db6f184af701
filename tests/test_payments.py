"""Money under uncertainty: the job-posting saga against a Stripe that completes requests the client gave up on,
through real workers, counted in the Stripe stand-in's own records."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import psutil
import pytest
from sqlalchemy import text

import saga
from saga import db, load
from saga.store import StepRecord
from saga.testing import Stack, wait_for_status, wait_until
from standins import StandIns
from tasks import payments
from tests.jobs import FINAL, assert_clean_end, submit, third_party_records
from tests.probes import waits_for


@pytest.fixture(autouse=True)
def no_faults_left(standins: StandIns) -> Iterator[None]:
    yield
    standins.stripe_faults("500", 0)  # a fault no request took must not reach the next test


def charge_step(saga_id: UUID) -> StepRecord:
    return load(saga_id).steps[2]


def payment_intent(saga_id: UUID) -> str:
    """The id the charge checkpointed, once it has."""
    return str(wait_until(lambda: (charge_step(saga_id).checkpoint or {}).get("payment_intent"),
                          what="the charge to checkpoint its PaymentIntent"))


def requests_for(standins: StandIns, pi_id: str, operation: str, done: bool = False) -> list[dict[str, Any]]:
    """Stripe's log of `operation` requests on one PaymentIntent (only the finished ones if `done`)."""
    return [r for r in standins.stripe_requests() if r["operation"] == operation and pi_id in r["path"]
            and (not done or r.get("status") is not None)]


def undo_of_the_charge(saga_id: UUID) -> list[dict[str, Any]]:
    return [e.detail["result"] for e in saga.events(saga_id) if e.kind == "step_compensated"
            and e.step == "charge_payment"]


def test_cancel_while_the_confirm_hangs_past_the_time_limit_leaves_no_charge(
    workers: Stack, standins: StandIns,
) -> None:
    """The confirm reaches Stripe and hangs there past the step's 10 s limit, and the client cancels. Stripe
    completes the confirm later; the compensation, which starts from the checkpointed id, waits for it (the
    PaymentIntent is locked meanwhile) and refunds it."""
    standins.stripe_faults("hang", 1, seconds=13, operation="confirm")
    saga_id = submit()
    pi_id = payment_intent(saga_id)
    wait_until(lambda: requests_for(standins, pi_id, "confirm"), what="the confirm to reach Stripe")
    asked = saga.cancel(saga_id)
    assert asked.cancel_requested and asked.status == "running", "the charge in flight decides first"
    record = wait_for_status(saga_id, FINAL, timeout=120)
    assert record.status == "compensated", record.error
    [confirm] = wait_until(lambda: requests_for(standins, pi_id, "confirm", done=True), what="the confirm to end")
    assert confirm["status"] == 200 and confirm["done_at"] - confirm["at"] >= 13, "Stripe charged after all"
    got = third_party_records(standins, saga_id)
    assert len(got["charged"]) == 1 and got["refunded"] == got["charged"][0]["amount"]
    assert_clean_end(standins, saga_id, "compensated")
    [undo] = undo_of_the_charge(saga_id)
    assert undo["outcome"] == "refunded" and undo["payment_intent"] == pi_id and len(undo["refunds"]) == 1
    assert charge_step(saga_id).compensation_result == undo


def test_the_last_charge_attempt_timing_out_while_stripe_completes_it_leaves_no_charge_without_a_posting(
    workers: Stack, standins: StandIns,
) -> None:
    attempts = payments.RETRY.max_attempts
    standins.stripe_faults("500", attempts - 1, operation="create")
    standins.stripe_faults("hang", 1, seconds=13, operation="confirm", add=True)
    saga_id = submit()
    record = wait_for_status(saga_id, FINAL, timeout=180)
    step = charge_step(saga_id)
    assert step.attempts == attempts and step.effect_unknown
    pi_id = (step.checkpoint or {})["payment_intent"]
    [confirm] = wait_until(lambda: requests_for(standins, pi_id, "confirm", done=True), what="the confirm to end")
    assert confirm["status"] == 200, "Stripe completed the last attempt's confirm"
    assert record.status == "compensated", record.error
    assert len(third_party_records(standins, saga_id)["charged"]) == 1
    assert_clean_end(standins, saga_id, "compensated")  # the charge Stripe completed was refunded in full
    assert [u["outcome"] for u in undo_of_the_charge(saga_id)] == ["refunded"]


def test_a_cancel_while_the_charge_goes_through_is_refused_and_the_posting_goes_live(
    workers: Stack, standins: StandIns,
) -> None:
    standins.stripe_faults("hang", 1, seconds=2, operation="confirm")
    saga_id = submit()
    pi_id = payment_intent(saga_id)
    wait_until(lambda: requests_for(standins, pi_id, "confirm"), what="the confirm to reach Stripe")
    assert saga.cancel(saga_id).cancel_requested
    record = wait_for_status(saga_id, FINAL, timeout=60)
    assert record.status == "completed", record.error
    assert not record.cancel_requested
    assert [e.step for e in saga.events(saga_id) if e.kind == "cancel_refused"] == ["charge_payment"]
    assert_clean_end(standins, saga_id, "completed")


def test_operator_compensation_after_stripe_forgot_the_keys_refunds_the_original_charge(
    workers: Stack, standins: StandIns,
) -> None:
    """The charge went through but its answer was lost, the client cancelled, and the refund was refused:
    the saga is `failed` with the customer charged. A day later (Stripe has dropped its idempotency keys) an
    operator re-runs the compensation, which finds the payment by the id in the ledger and refunds it."""
    standins.stripe_faults("lost", 1, seconds=12, operation="confirm")
    standins.stripe_faults("400", 1, operation="refund", code="balance_insufficient", add=True)
    saga_id = submit()
    pi_id = payment_intent(saga_id)
    wait_until(lambda: requests_for(standins, pi_id, "confirm"), what="the confirm to reach Stripe")
    saga.cancel(saga_id)
    record = wait_for_status(saga_id, FINAL, timeout=120)
    assert record.status == "failed" and "compensation of charge_payment gave up" in (record.error or "")
    got = third_party_records(standins, saga_id)
    assert len(got["charged"]) == 1 and got["refunded"] == 0
    assert got["objects"] == [] and got["postings"] == [], "the older steps were undone all the same"

    assert standins.stripe_expire_keys() > 0
    saga.compensate(saga_id)
    record = wait_for_status(saga_id, FINAL, timeout=60)
    assert record.status == "compensated", record.error
    assert_clean_end(standins, saga_id, "compensated")
    intents = [pi["id"] for pi in standins.payment_intents() if pi["metadata"].get("saga_id") == str(saga_id)]
    assert intents == [pi_id], "no PaymentIntent may come from replaying a create whose key expired"
    assert [u["outcome"] for u in undo_of_the_charge(saga_id)] == ["refunded"]


def gone(process: psutil.Process) -> bool:
    """The process has ended (a zombie its frozen parent has not reaped yet counts)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_worker_frozen_inside_the_charge_past_its_lease_commits_nothing_and_charges_nothing(
    workers: Stack, standins: StandIns,
) -> None:
    """Freeze (SIGSTOP) the worker right after the charge checkpointed its PaymentIntent and before it
    confirms. Its lease runs out, the client cancels, another worker undoes the saga: the compensation cancels
    the PaymentIntent. Then the frozen worker wakes and sends its confirm: Stripe refuses it, and the zombie
    records nothing."""
    for process in [p for p in workers.processes if p.name.startswith("w")]:
        process.stop()
        workers.processes.remove(process)
    frozen = workers.worker("w-frozen", concurrency=1, queues=("celery",))
    try:
        standins.stripe_faults("hang", 1, seconds=2, operation="create")  # time to take the step row first
        saga_id = submit()
        wait_until(lambda: charge_step(saga_id).status == "running", what="the charge to start")
        with db.engine().connect() as holder:
            held = holder.begin()
            holder.execute(text("SELECT 1 FROM saga_steps WHERE saga_id = :s AND idx = 2 FOR UPDATE"), {"s": saga_id})
            holder_pid = holder.execute(text("SELECT pg_backend_pid()")).scalar()
            wait_until(lambda: waits_for(holder_pid), what="the checkpoint to wait for the step row")
            frozen.send(signal.SIGSTOP)
            held.rollback()  # the checkpoint's UPDATE now commits, though its worker is frozen
        pi_id = payment_intent(saga_id)
        workers.worker("w-rescuer", concurrency=2, queues=("celery",))
        assert saga.cancel(saga_id).status == "running", "the frozen charge still holds its lease"
        record = wait_for_status(saga_id, FINAL, timeout=120)
        assert record.status == "compensated", record.error
        assert [u["outcome"] for u in undo_of_the_charge(saga_id)] == ["canceled: nothing charged"]

        # Wake the pool child alone, long after its lease ended. The charge ran in its message by continuation,
        # under its own time limits, which ran out while it was frozen: the process ends before it can confirm.
        # (A message's own step, held to Celery's limits, would send its confirm now, and Stripe refuse it.)
        [child] = psutil.Process(frozen.popen.pid).children()
        os.kill(child.pid, signal.SIGCONT)
        wait_until(lambda: gone(child) or requests_for(standins, pi_id, "confirm", done=True),
                   what="the woken charge to end or confirm")
        late = requests_for(standins, pi_id, "confirm", done=True)
        assert [r["status"] for r in late] in ([], [400]), "Stripe refuses to confirm a canceled PaymentIntent"
        frozen.send(signal.SIGCONT)
        wait_until(lambda: gone(child), what="the zombie to end")
        assert saga.events(saga_id)[-1].kind == "saga_compensated", "the zombie recorded something"
        assert "step_succeeded" not in [e.kind for e in saga.events(saga_id) if e.step == "charge_payment"]
        got = third_party_records(standins, saga_id)
        assert got["charged"] == [] and [pi["status"] for pi in standins.payment_intents()
                                          if pi["id"] == pi_id] == ["canceled"]
        assert [c for c in standins.charges() if c["payment_intent"] == pi_id] == [], "no attempt to take money"
        assert_clean_end(standins, saga_id, "compensated")
    finally:
        frozen.kill(signal.SIGKILL)
        for process in [p for p in workers.processes if p.name.startswith("w")]:
            if process is not frozen:
                process.stop()
            workers.processes.remove(process)
