"""Circuit breakers shared by the fleet: one per third party that steps depend on (`depends_on=`).

A breaker is `closed` while calls go through, counting consecutive transient failures of the steps that depend on
it; at `failures` in a row it opens for `cooldown` seconds, during which those steps are not attempted: they wait
(no attempt used, the saga neither fails nor pauses) and are woken when it half-opens. Then one probe at a time
(the first step to ask) runs; its success closes the breaker, its failure opens it again for twice as long, up to
`max_cooldown`. Closing is by success only.

The state lives in the ledger's database (`saga_breakers`), so every worker sees the same breaker. The transitions
are the pure methods of `Breaker` (testable with any clock); this module reads and writes them. No maintained
library fits: pybreaker's shared storage is Redis-only and lets every caller through while half-open, and it
wraps a call where a step must instead be put off without running.
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Connection, text

from saga import db, metrics
from saga.settings import get_settings

log = logging.getLogger("saga.breakers")

Phase = Literal["closed", "open", "half_open"]
_NAME = re.compile(r"^[a-z][a-z0-9_.-]*$")
# Seconds a step waits before looking again while another step probes a half-open breaker.
PROBE_POLL = 1.0


@dataclass(frozen=True)
class Dependency:
    """A third party's breaker settings (`Sagas.dependency`; `SAGA_BREAKERS` overrides them per name)."""

    name: str
    failures: int = 5  # consecutive transient failures that open it
    cooldown: float = 30.0  # seconds it stays open before the first probe
    max_cooldown: float = 300.0  # each failed probe doubles the cool-down, up to this

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"dependency name {self.name!r} must be lowercase letters, digits, '_', '.', '-'")
        if self.failures < 1:
            raise ValueError(f"dependency {self.name!r}: failures must be at least 1")
        if self.cooldown <= 0 or self.max_cooldown < self.cooldown:
            raise ValueError(f"dependency {self.name!r}: cooldown must be positive and at most max_cooldown")


# Declared in code (`Sagas.dependency`); a name never declared has the defaults.
DECLARED: dict[str, Dependency] = {}


def declare(name: str, **settings: Any) -> Dependency:
    """Declare (or re-declare) a dependency's breaker settings."""
    DECLARED[name] = Dependency(name, **settings)
    return DECLARED[name]


def dependency(name: str) -> Dependency:
    """The settings in force for `name`: its declaration, with `SAGA_BREAKERS` over it."""
    base = DECLARED.get(name) or Dependency(name)
    override = get_settings().breakers.get(name)
    if not override:
        return base
    return replace(base, **{k: int(v) if k == "failures" else v for k, v in override.items()})


def names(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """A step's `depends_on`, as a tuple of checked names."""
    given = (value,) if isinstance(value, str) else tuple(value or ())
    for name in given:
        Dependency(name)  # checks the name
    return given


@dataclass(frozen=True)
class Wait:
    """A step may not be attempted now: `dependency`'s breaker is open; look again in `seconds`."""

    dependency: str
    seconds: float


@dataclass(frozen=True)
class Breaker:
    """One breaker's state, and its transitions. `now` is the database's clock."""

    name: str
    state: Literal["closed", "open"] = "closed"
    failures: int = 0
    cooldown: float = 0.0
    retry_at: datetime | None = None
    probe_token: str | None = None
    probe_until: datetime | None = None
    opened_at: datetime | None = None
    opens: int = 0

    def phase(self, now: datetime) -> Phase:
        if self.state == "closed":
            return "closed"
        return "half_open" if self.retry_at is not None and self.retry_at <= now else "open"

    def probing(self, now: datetime) -> bool:
        """A probe is in flight (and its holder's lease has not ended)."""
        return self.probe_until is not None and self.probe_until > now

    def admit(self, now: datetime, token: str, lease: float) -> tuple[Breaker, Wait | None]:
        """A step asks to call the dependency: go (closed; or, half-open with no probe in flight, as the probe),
        or wait until it half-opens (open) or until the probe in flight may have decided (half-open)."""
        phase = self.phase(now)
        if phase == "closed":
            return self, None
        if phase == "open":
            return self, Wait(self.name, (self.retry_at - now).total_seconds())  # type: ignore[operator]
        if self.probing(now):
            return self, Wait(self.name, min(PROBE_POLL, (self.probe_until - now).total_seconds()))  # type: ignore[operator]
        return replace(self, probe_token=token, probe_until=now + timedelta(seconds=lease)), None

    def failure(self, now: datetime, settings: Dependency, token: str) -> Breaker:
        """A transient failure of a call to the dependency: counted while closed (opening it at the threshold);
        the probe's failure opens it again for longer; a call that began before it opened changes nothing."""
        if self.state == "closed":
            if self.failures + 1 >= settings.failures:
                return self._open(now, settings.cooldown)
            return replace(self, failures=self.failures + 1)
        if self.probe_token == token or (self.phase(now) == "half_open" and not self.probing(now)):
            return self._open(now, min(settings.max_cooldown, max(self.cooldown, settings.cooldown) * 2))
        return self

    def success(self, now: datetime, token: str) -> Breaker:
        """A call to the dependency succeeded: consecutive failures start again from none; the probe's success
        (or any success once it half-opened) closes it."""
        if self.state == "closed":
            return replace(self, failures=0) if self.failures else self
        if self.probe_token == token or self.phase(now) == "half_open":
            return Breaker(self.name, opens=self.opens)
        return self

    def _open(self, now: datetime, cooldown: float) -> Breaker:
        return Breaker(self.name, "open", failures=self.failures + (self.state == "closed"), cooldown=cooldown,
                       retry_at=now + timedelta(seconds=cooldown), opened_at=now,
                       opens=self.opens + (self.state == "closed"))


_COLUMNS = "name, state, failures, cooldown, retry_at, probe_token, probe_until, opened_at, opens"
# What a step reads before calling its dependencies: nothing is locked or written while they are closed.
_READ = text(f"SELECT {_COLUMNS}, now() AS now FROM saga_breakers WHERE name = ANY(:names)")
# A transition starts from the breaker's row, made if it is new, locked until the transition is written.
_ENSURE = text("INSERT INTO saga_breakers (name) VALUES (:name) ON CONFLICT (name) DO NOTHING")
_LOCK = text(f"SELECT {_COLUMNS}, now() AS now FROM saga_breakers WHERE name = :name FOR UPDATE")
_WRITE = text("""
UPDATE saga_breakers SET state = :state, failures = :failures, cooldown = :cooldown, retry_at = :retry_at,
    probe_token = :probe_token, probe_until = :probe_until, opened_at = :opened_at, opens = :opens,
    updated_at = now()
WHERE name = :name
""")
_ALL = text(f"SELECT {_COLUMNS}, now() AS now FROM saga_breakers ORDER BY name")


def _breaker(row: Any) -> Breaker:
    return Breaker(row.name, row.state, row.failures, row.cooldown, row.retry_at, row.probe_token, row.probe_until,
                   row.opened_at, row.opens)


def _transition(conn: Connection, name: str, change: Any) -> tuple[Breaker, Breaker, datetime, Any]:
    """Apply `change(breaker, now) -> (new, extra)` to `name`'s row under its lock; the old and new breaker, the
    database's time, and what `change` returned beside."""
    conn.execute(_ENSURE, {"name": name})
    row = conn.execute(_LOCK, {"name": name}).one()
    old = _breaker(row)
    new, extra = change(old, row.now)
    if new != old:
        conn.execute(_WRITE, {"name": name, "state": new.state, "failures": new.failures, "cooldown": new.cooldown,
                              "retry_at": new.retry_at, "probe_token": new.probe_token,
                              "probe_until": new.probe_until, "opened_at": new.opened_at, "opens": new.opens})
    return old, new, row.now, extra


@dataclass(frozen=True)
class Permit:
    """What a step was let through with: whether any of its breakers had failures or an open state to clear on
    success (if not, a success writes nothing)."""

    names: tuple[str, ...]
    token: str
    clean: bool


def permit(deps: tuple[str, ...], token: str, lease: float) -> Permit | Wait:
    """Ask every breaker of `deps` to let an attempt (`token`, holding its step `lease` seconds) call them:
    a `Permit`, or how long to `Wait` (the attempt is not made and uses nothing)."""
    with db.autocommit() as conn:
        rows = {row.name: row for row in conn.execute(_READ, {"names": list(deps)})}
    if all(row.state == "closed" for row in rows.values()):
        return Permit(deps, token, clean=all(row.failures == 0 for row in rows.values()))
    for row in rows.values():  # an open one is waited for before any probe is taken
        breaker = _breaker(row)
        if breaker.phase(row.now) == "open":  # spread out, so the steps waiting on it do not all wake at once
            seconds = (breaker.retry_at - row.now).total_seconds() + random.random()  # type: ignore[operator]
            return _refused(Wait(breaker.name, seconds))
    for name in deps:
        if name in rows and rows[name].state == "open":
            with db.transaction() as conn:
                old, _, _, wait = _transition(conn, name, lambda b, now: b.admit(now, token, lease))
            if wait is not None:
                return _refused(wait)
            if old.probe_token != token:
                metrics.BREAKER_PROBES.labels(name, "started").inc()
                log.info("breaker %s half-open: probing with attempt %s", name, token)
    return Permit(deps, token, clean=False)


def _refused(wait: Wait) -> Wait:
    metrics.BREAKER_REFUSED.labels(wait.dependency).inc()
    return wait


def succeeded(granted: Permit) -> None:
    """The attempt's calls went through (its body returned, or failed for a reason of its own)."""
    if granted.clean:
        return
    for name in granted.names:
        with db.transaction() as conn:
            old, new, now, _ = _transition(conn, name, lambda b, now: (b.success(now, granted.token), None))
        if old.state == "open" and new.state == "closed":
            metrics.BREAKER_PROBES.labels(name, "closed").inc()
            log.warning("breaker %s closed: a call succeeded after %.0f s open", name,
                        (now - old.opened_at).total_seconds() if old.opened_at else 0)


def failed(granted: Permit) -> Wait | None:
    """The attempt failed transiently: counted against each of its breakers. If one of them is (now) open,
    how long until it half-opens, plus a little spread so the steps that wait on it do not all wake at once."""
    longest: Wait | None = None
    for name in granted.names:
        settings = dependency(name)
        with db.transaction() as conn:
            old, new, now, _ = _transition(conn, name, lambda b, now, s=settings: (b.failure(now, s, granted.token), None))
        if new.state == "open" and new.opened_at != old.opened_at:
            if old.state == "closed":
                metrics.BREAKER_OPENED.labels(name).inc()
                log.warning("breaker %s opened after %d consecutive failures; steps that depend on it wait %.0f s",
                            name, new.failures, new.cooldown)
            else:
                metrics.BREAKER_PROBES.labels(name, "reopened").inc()
                log.warning("breaker %s: the probe failed; open again for %.0f s", name, new.cooldown)
        if new.state == "open" and new.retry_at is not None:
            seconds = max(0.0, (new.retry_at - now).total_seconds()) + random.random()
            if longest is None or seconds > longest.seconds:
                longest = Wait(name, seconds)
    return longest


# A step waits on a breaker: recovery must not take the saga for stuck meanwhile, and its log says what it waits
# for (written once per stretch of patience, not at every look while the breaker stays open); and the waiting
# message learns whether the saga still wants the step (a cancel, or an operator's action, ends the wait).
_WAITING = text("""
WITH s AS (
    SELECT status, cancel_requested FROM sagas WHERE id = :saga_id
), u AS (
    UPDATE sagas SET deadline = now() + make_interval(secs => :wait + :pickup)
    WHERE id = :saga_id AND status IN ('pending', 'running', 'compensating')
        AND coalesce(deadline, '-infinity') < now() + make_interval(secs => :wait + :pickup / 2)
    RETURNING id
), e AS (
    INSERT INTO saga_events (saga_id, step, kind, detail)
    SELECT id, :step, 'step_waiting', jsonb_build_object('dependency', CAST(:dependency AS text),
        'until', now() + make_interval(secs => :wait), 'compensation', NOT :forward)
    FROM u
)
SELECT status, cancel_requested FROM s
""")


def record_wait(saga_id: Any, step: str, forward: bool, wait: Wait, pickup: float) -> Any:
    """Note in the ledger that `step` of the saga waits `wait.seconds` for its dependency's breaker, without an
    attempt; `pickup` is how long after that recovery may take the saga for stuck. The saga's status and whether
    a cancel is asked (None if it is gone)."""
    with db.autocommit() as conn:
        return conn.execute(_WAITING, {"saga_id": saga_id, "step": step, "forward": forward, "wait": wait.seconds,
                                       "pickup": pickup, "dependency": wait.dependency}).first()


@dataclass(frozen=True)
class BreakerState:
    """A breaker as `/healthz`, the console and `saga breakers` show it."""

    name: str
    phase: Phase
    failures: int
    opens: int
    opened_at: datetime | None
    retry_at: datetime | None
    probing: bool
    retry_after: float  # seconds until a step may call it again (0 when closed or half-open)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.phase, "failures": self.failures, "opens": self.opens,
                "opened_at": self.opened_at.isoformat() if self.opened_at else None,
                "retry_at": self.retry_at.isoformat() if self.retry_at else None, "probing": self.probing,
                "retry_after": self.retry_after}


def states(conn: Connection | None = None) -> list[BreakerState]:
    """Every breaker that has ever counted a failure, by name."""
    with db.autocommit(conn) as c:
        rows = c.execute(_ALL).all()
    return [_state(_breaker(row), row.now) for row in rows]


def _state(breaker: Breaker, now: datetime) -> BreakerState:
    phase = breaker.phase(now)
    wait = (breaker.retry_at - now).total_seconds() if phase == "open" and breaker.retry_at else 0.0
    if phase == "half_open" and breaker.probing(now):
        wait = PROBE_POLL
    return BreakerState(breaker.name, phase, breaker.failures, breaker.opens,
                        breaker.opened_at, breaker.retry_at, breaker.probing(now), max(0.0, wait))


def before_no_return(saga_type: Any) -> tuple[str, ...]:
    """The dependencies of a saga type's steps up to its point of no return (its pivot, or the last step before
    its first retriable one): while one of their breakers is open, a new saga of the type would only wait."""
    found: list[str] = []
    for step in saga_type.steps:
        if step.kind.value == "retriable":
            break
        found += [d for d in step.depends_on if d not in found]
        if step.kind.value == "pivot":
            break
    return tuple(found)


def blocking(saga_type: Any) -> BreakerState | None:
    """The open breaker (longest to wait for) that a new saga of `saga_type` would wait on before its point of
    no return; None if there is none."""
    deps = saga_type.derived.get("before_no_return")
    if deps is None:
        deps = saga_type.derived["before_no_return"] = before_no_return(saga_type)
    if not deps:
        return None
    with db.autocommit() as conn:
        rows = conn.execute(_READ, {"names": list(deps)}).all()
    held = [s for s in (_state(_breaker(r), r.now) for r in rows)
            if s.phase == "open" or (s.phase == "half_open" and s.probing)]
    return max(held, key=lambda s: s.retry_after, default=None)


def retry_after(state: BreakerState) -> int:
    """Whole seconds for a `Retry-After` header: at least 1."""
    return max(1, math.ceil(state.retry_after))
