"""Crash tests for your own saga types: SIGKILL a real worker at each step boundary, once, and count body runs.

    points = crash_points(orders)                       # before and after each step's body
    outcome = CrashTester(stack).run(orders, {...}, points[3])
    assert outcome.record.status == "completed"
    assert charges_at_the_psp(outcome.record.id) == 1     # your third party's own records

The tester's worker loads `saga.testing.crash_hook`, which wraps every body to count its runs and to kill
its process at the planned boundary, the first time it gets there. Your code and the engine run unchanged.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from uuid import uuid4

from saga.definitions import SagaType
from saga.states import FINAL
from saga.testing.crash_hook import PLAN_ENV
from saga.testing.stack import Stack, wait_until

WORKER = "crash-worker"
Kill = Literal["child", "worker"]


@dataclass(frozen=True)
class CrashPoint:
    """A boundary of one body: `before` it acts (claimed, nothing done) or `after` (done, not yet recorded)."""

    step: str
    when: Literal["before", "after"]
    undo: bool = False  # the step's compensation rather than its forward body

    def __str__(self) -> str:
        return f"{'undo ' if self.undo else ''}{self.step} {self.when}"

    @property
    def body(self) -> str:
        return f"undo {self.step}" if self.undo else self.step


def crash_points(saga_type: SagaType[Any], *, undo: bool = False) -> list[CrashPoint]:
    """Before and after each step's body, in order; with `undo`, each compensation's instead (newest first)."""
    if undo:
        steps = [s for s in reversed(saga_type.steps) if s.compensation is not None]
    else:
        steps = list(saga_type.steps)
    return [CrashPoint(s.name, when, undo) for s in steps for when in ("before", "after")]


@dataclass
class CrashOutcome:
    """How a saga ended after one crash, and how many times each body ran (every execution, not a set)."""

    record: Any
    point: CrashPoint
    runs: Counter[str]


class CrashTester:
    """Runs sagas one at a time on a `Stack`, with one worker that crashes at the planned point."""

    def __init__(self, stack: Stack, *, kill: Kill = "child", queues: Iterable[str] | None = None,
                 concurrency: int = 1) -> None:
        self.stack = stack
        self.kill = kill
        self.queues = tuple(queues or stack.queues)
        self.concurrency = concurrency
        self.plan = stack.data_dir / "crash-plan.json"
        self.runs_log = stack.data_dir / "crash-runs.log"

    def run(self, saga_type: SagaType[Any] | str, input: Mapping[str, Any], point: CrashPoint,
            timeout: float = 180.0) -> CrashOutcome:
        """Start one saga, crash its worker once at `point`, and wait until the saga has ended.

        Raises AssertionError if the saga ended without reaching `point` (so the crash was never tested).
        """
        import saga

        name = saga_type if isinstance(saga_type, str) else saga_type.name
        marker = self.plan.with_suffix(".crashed")
        marker.unlink(missing_ok=True)
        self.plan.write_text(json.dumps({"saga_type": name, "body": point.body, "when": point.when,
                                         "kill": self.kill, "marker": str(marker),
                                         "runs": str(self.runs_log)}))
        self._worker()
        record = saga.start(name, dict(input), idempotency_key=f"crash-{uuid4()}").saga

        def ended() -> Any:
            if self.kill == "worker" and marker.exists():
                self._worker()  # the crash took the whole worker: start another, as a supervisor would
            current = saga.load(record.id)
            return current if current.status in FINAL else None

        final = wait_until(ended, timeout=timeout, interval=0.1, what=f"saga {record.id} to end after {point}")
        if not marker.exists():
            raise AssertionError(f"saga {record.id} ended {final.status} without reaching {point}")
        return CrashOutcome(final, point, self.body_runs(record.id))

    def body_runs(self, saga_id: Any) -> Counter[str]:
        """How many times each body ran for this saga, by "step" or "undo step"."""
        if not self.runs_log.exists():
            return Counter()
        prefix = f"{saga_id} "
        return Counter(line[len(prefix):] for line in self.runs_log.read_text().splitlines()
                       if line.startswith(prefix))

    def close(self) -> None:
        """Stop the crashing worker (the stack's next worker is an ordinary one)."""
        self.stack.stop_workers(kill=True, keep=[p.name for p in self.stack.workers() if p.name != WORKER])
        self.plan.unlink(missing_ok=True)

    def _worker(self) -> None:
        """Make the crashing worker the only one, so every step runs where the crash is planned."""
        self.stack.stop_workers(keep=[WORKER])
        if any(p.name == WORKER for p in self.stack.workers()):
            return
        self.stack.processes[:] = [p for p in self.stack.processes if p.name != WORKER]
        self.stack.worker(WORKER, concurrency=self.concurrency, queues=self.queues,
                          extra=["--include=saga.testing.crash_hook"], env={PLAN_ENV: str(self.plan)})
