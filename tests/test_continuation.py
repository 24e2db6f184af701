"""Continuation: a worker that committed a step runs the saga's next one in the same task. What it costs the ledger,
and that a worker killed or frozen between that merged commit and the next body, or a continued step that hangs
past its own time limit, still ends the saga cleanly (against real workers, checked on the probes' own records)."""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path
from uuid import UUID, uuid4

import pytest

import saga
from saga import continuation
from saga.testing import CrashPoint, CrashTester, Stack, wait_for_status, wait_until
from tests.probes import check_invariants, effects, runs
from tests.sagas import probe, probe_short, probe_tx
from tests.statement_log import LOG_ENV

FINAL = ("completed", "compensated", "paused", "failed")


def started_by(saga_id: UUID, step: str) -> list[str]:
    """The task id of each attempt of `step`, oldest first, as the ledger recorded them."""
    return [e.detail["task_id"] for e in saga.events(saga_id) if e.kind == "step_started" and e.step == step]


def continued(saga_id: UUID, saga_type: saga.SagaType, step: str, attempt: int = 0) -> bool:
    """Whether that attempt of `step` ran in the message of the saga's first step (claimed by continuation)."""
    first = saga_type.steps[0]
    message = started_by(saga_id, first.name)[0]
    named = next(s for s in saga_type.steps if s.name == step)
    return started_by(saga_id, step)[attempt] == continuation.task_id(message, named, first.task_name)


@pytest.mark.parametrize("saga_type, first_costs", [(probe, 2), (probe_tx, 2)], ids=["own-tx", "transactional"])
def test_each_continued_step_costs_the_ledger_one_statement(workers: Stack, tmp_path: Path,
                                                           saga_type: saga.SagaType, first_costs: int) -> None:
    """The first step, taken from its message, reads (or claims) and commits: two statements. Each step after it
    was claimed by the commit before it, and its own commit claims the next: one statement each."""
    log = tmp_path / "statements.jsonl"
    workers.stop_workers()
    workers.worker("w-statements", concurrency=1, extra=["--include=tests.statement_log"], env={LOG_ENV: str(log)})
    try:
        record = saga.start(saga_type.name, {}, idempotency_key=str(uuid4())).saga
        assert wait_for_status(record.id, FINAL).status == "completed"
    finally:
        workers.stop_workers()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    per_step = Counter(line["step"] for line in lines if line["saga_id"] == str(record.id))
    print("ledger statements per step:", dict(per_step))
    names = [s.name for s in saga_type.steps]
    assert all(continued(record.id, saga_type, name) for name in names[1:]), "a step went through the broker"
    assert per_step == {names[0]: first_costs, **{name: 1 for name in names[1:]}}, per_step


def test_a_pool_child_killed_between_the_merged_commit_and_the_next_body(
    workers: Stack, saga_crashes: CrashTester,
) -> None:
    """Killed after b's commit claimed c, before c's body: the message is requeued and walks the saga from the
    ledger (b is not run again), c runs once its dead attempt's lease ends, and every effect happens once."""
    outcome = saga_crashes.run(probe, {}, CrashPoint("c", "before"))
    saga_id = outcome.record.id
    assert outcome.record.status == "completed", outcome.record.error
    assert continued(saga_id, probe, "c"), "the killed attempt of c was not claimed by continuation"
    assert outcome.runs["c"] == 2 and [r.attempt for r in runs(saga_id, "c")] == [2]
    assert [len(runs(saga_id, s)) for s in "ab"] == [1, 1], "a step that succeeded ran again"
    assert effects(saga_id, "do") == ["a", "b", "c", "d"]
    assert check_invariants(saga_id) == "completed"


def test_a_worker_frozen_in_a_continued_step_past_its_lease_commits_nothing_when_it_wakes(workers: Stack) -> None:
    """SIGSTOP while c, claimed by b's commit, holds before its effect; another worker takes c over once the lease
    ends; SIGCONT: the frozen attempt's own limits have run out, so its process ends before it acts or commits."""
    record = saga.start("probe", {"hold_before": {"c": 4}}, idempotency_key=str(uuid4())).saga
    frozen = workers.workers()[0]
    wait_until(lambda: runs(record.id, "c"), what="c to start")
    frozen.send(signal.SIGSTOP)
    try:
        assert continued(record.id, probe, "c"), "c was not claimed by continuation"
        workers.worker("w2", concurrency=1)
        done = wait_for_status(record.id, FINAL, timeout=60)
    finally:
        frozen.send(signal.SIGCONT)
    workers.stop_workers(keep=[frozen.name])
    assert done.status == "completed", done.error
    wait_until(lambda: frozen.popen.poll() is not None or "exited with 'signal" in frozen.log_text(), timeout=15,
               what="the frozen attempt's process to end when it wakes")
    assert [r.attempt for r in runs(record.id, "c")] == [1, 2]
    assert effects(record.id, "do") == ["a", "b", "c", "d"], "the woken attempt acted"
    assert [e.kind for e in saga.events(record.id) if e.step == "c"].count("step_succeeded") == 1
    assert check_invariants(record.id) == "completed"


def test_a_continued_step_that_hangs_is_ended_at_its_own_hard_time_limit(workers: Stack) -> None:
    """c ignores its soft limit in every attempt: each is ended at c's own hard limit (2 s + 5 s), not at the
    message's, recorded as a time limit, and the saga is undone once c's attempts are used up."""
    record = saga.start("probe_short", {"hang": "c"}, idempotency_key=str(uuid4())).saga
    done = wait_for_status(record.id, FINAL, timeout=90)
    assert done.status == "compensated", done.error
    assert continued(record.id, probe_short, "c")
    assert "TimeLimitExceeded" in (done.error or ""), done.error
    step = next(s for s in probe_short.steps if s.name == "c")
    ran = runs(record.id, "c")
    ended = [e.created_at for e in saga.events(record.id) if e.step == "c"
             and e.kind in ("step_attempt_failed", "step_failed")]
    assert len(ran) == len(ended) == step.retry.max_attempts, (ran, ended)
    took = [(end - run.at).total_seconds() for run, end in zip(ran, ended, strict=True)]
    hard = step.time_limit + 5
    assert all(hard - 0.5 < t < hard + 2 for t in took), f"attempts ended after {took} s; c's hard limit is {hard} s"
    # c's outcome is unknown (ended by a time limit, as far as the ledger can tell), so it is undone too.
    assert effects(record.id, "do") == ["a", "b"] and effects(record.id, "undo") == ["c", "b", "a"]
    assert check_invariants(record.id) == "compensated"
