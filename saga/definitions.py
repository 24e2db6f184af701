"""Declaring saga types: a name, a pydantic input model, and ordered steps that are Celery tasks."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar
from uuid import UUID

from pydantic import BaseModel, ValidationError, create_model
from sqlalchemy import Connection

from saga.breakers import names as dependency_names
from saga.errors import InvalidInput, UnknownSagaType, VersionNotDeclared
from saga.retry import RetryPolicy
from saga.states import StepKind

InputT = TypeVar("InputT", bound=BaseModel)
StepFn = Callable[["StepContext[Any]"], Any]

# Seconds between a step's soft time limit (raised inside the body) and the hard one (kills the process).
HARD_LIMIT_GRACE = 5.0
# Seconds a body may live on past its hard limit: Celery runs the errback first, then kills the process.
KILL_GRACE = 2.0
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

# (name, version) -> the saga type; several versions of one type may be declared side by side.
REGISTRY: dict[tuple[str, int], SagaType[Any]] = {}


class Engine(Protocol):
    """What a saga type needs from the engine it is declared on (`saga.Sagas`)."""

    app: Any  # the Celery app its tasks are registered on

    def task_for(self, step: Step, *, compensating: bool) -> Any:
        """Register and return the Celery task that runs `step` (or its compensation)."""


@dataclass(frozen=True)
class StepContext(Generic[InputT]):
    """What a step body (or a compensation) gets: the saga's input and the results of earlier steps."""

    saga_id: UUID
    saga_type: str
    step: str
    input: InputT
    results: Mapping[str, Any]
    idempotency_key: str
    attempt: int
    # Unique to this attempt (never reused, not even by an operator's re-run): for calls whose repeat the third
    # party's own rules make harmless, so no attempt is answered with an earlier attempt's saved error.
    attempt_key: str
    compensating: bool = False
    # Transactional steps only: the connection whose transaction also claims and commits the step.
    db: Connection | None = None
    # What this step's attempts (and its compensation) checkpointed so far, oldest key first.
    checkpoints: dict[str, Any] = field(default_factory=dict)
    _save: Callable[[dict[str, Any]], None] | None = field(default=None, repr=False)

    @property
    def result(self) -> Any:
        """This step's own forward result (what a compensation undoes); None if it never committed."""
        return self.results.get(self.step)

    def checkpoint(self, **values: Any) -> None:
        """Record progress durably before the step's effect is finished, e.g. the id a third party just gave.

        The values are merged into `checkpoints`, which later attempts and the compensation see. The write is
        fenced by this attempt's claim: if the attempt lost its lease (another worker took the step, or the
        saga moved on), `LeaseLost` is raised and the body must not go on to act.
        """
        if self._save is None:
            raise RuntimeError(f"step {self.step!r} is transactional: its writes commit with its outcome, so it has "
                               "nothing to checkpoint (checkpoints are for effects outside the ledger)")
        self._save(values)
        self.checkpoints.update(values)


class LargeField:
    """What a large input field holds in a step that did not ask for it with `needs=`: using it says so."""

    def __init__(self, field: str) -> None:
        self._field = field

    def _message(self) -> str:
        return (f"input field {self._field!r} is large and not loaded for this step: declare it with "
                f"needs=({self._field!r},) on the step")

    def _refuse(self, *_: Any, **__: Any) -> Any:
        raise TypeError(self._message())

    __str__ = __bytes__ = __len__ = __iter__ = __getitem__ = _refuse

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(self._message())

    def __repr__(self) -> str:
        return f"<large input field {self._field!r}, not loaded (needs=)>"


@dataclass
class Compensation:
    """The task that undoes one step's effect."""

    fn: StepFn
    task_name: str
    retry: RetryPolicy
    time_limit: float
    transactional: bool = False
    needs: tuple[str, ...] = ()
    task: Any = None


@dataclass
class Step:
    """One step of a saga type, bound to its own named Celery task."""

    saga: SagaType[Any]
    name: str
    index: int
    kind: StepKind
    fn: StepFn
    task_name: str
    retry: RetryPolicy
    time_limit: float
    # The body only writes to the ledger's database, through `ctx.db`: its writes commit atomically with
    # the step's outcome, so they happen exactly once and a crash leaves nothing half-done.
    transactional: bool = False
    # The large input fields (`SagaType(large_fields=...)`) its body reads; the others are not loaded for it.
    needs: tuple[str, ...] = ()
    # The third parties its body (and its compensation) calls (`saga.breakers`): while one's breaker is open
    # the step waits instead of being attempted.
    depends_on: tuple[str, ...] = ()
    compensation: Compensation | None = None
    task: Any = None

    @property
    def lease_seconds(self) -> float:
        """How long an attempt holds the step: until its process is surely dead."""
        return self.time_limit + HARD_LIMIT_GRACE + KILL_GRACE

    @property
    def compensation_lease_seconds(self) -> float:
        return (self.compensation.time_limit if self.compensation else self.time_limit) + HARD_LIMIT_GRACE + KILL_GRACE

    def compensate_with(
        self, fn: StepFn | None = None, *, name: str | None = None, retry: RetryPolicy | None = None,
        time_limit: float | None = None, transactional: bool = False, needs: tuple[str, ...] = (),
    ) -> Any:
        """Decorator declaring the compensation of this step."""

        def register(fn: StepFn) -> StepFn:
            if self.kind is StepKind.RETRIABLE:
                raise ValueError(f"step {self.name!r} is retriable and cannot have a compensation")
            if self.compensation is not None:
                raise ValueError(f"step {self.name!r} already has a compensation")
            comp = Compensation(
                fn=fn, task_name=name or self.saga.task_name(fn),
                retry=retry or self.saga.default_retry, time_limit=time_limit or self.time_limit,
                transactional=transactional, needs=self.saga.check_needs(fn.__name__, needs),
            )
            self.compensation = comp
            comp.task = self.saga.engine.task_for(self, compensating=True)
            self.saga.derived.clear()
            return fn

        return register(fn) if fn is not None else register


# Default bound on one inline input field, as JSON (`SagaType(max_field_bytes=...)`).
MAX_FIELD_BYTES = 64 * 1024


class SagaType(Generic[InputT]):
    """A kind of business operation: `compensable` steps, then at most one `pivot`, then `retriable` ones.

    Declared with `Sagas.saga_type(...)`, which registers its steps' tasks on that engine's Celery app.
    """

    def __init__(
        self, engine: Engine, name: str, input_model: type[InputT], *, default_retry: RetryPolicy | None = None,
        default_time_limit: float = 60.0, queue: str = "celery", large_fields: tuple[str, ...] = (),
        version: int = 1, max_field_bytes: int = MAX_FIELD_BYTES, continuation: bool = True,
    ) -> None:
        if not _NAME.match(name):
            raise ValueError(f"saga type name {name!r} must be lowercase letters, digits and underscores")
        if not isinstance(version, int) or version < 1:
            raise ValueError(f"saga type {name!r}: version must be a whole number from 1, not {version!r}")
        if (name, version) in REGISTRY:
            raise ValueError(f"saga type {name!r} version {version} is declared twice")
        unknown = [f for f in large_fields if f not in input_model.model_fields]
        if unknown:
            raise ValueError(f"saga type {name!r}: large field {unknown[0]!r} is not a field of "
                             f"{input_model.__name__}")
        # Kept in a column of their own, loaded only for the steps that name them in `needs`.
        self.large_fields = tuple(large_fields)
        # The most an input field kept inline may take as JSON: every step loads those, so a field of megabytes
        # must be declared large (or this raised) rather than slow every read of the saga.
        self.max_field_bytes = max_field_bytes
        # The other fields, to type them for a step without validating the large ones it does not read.
        self._small_model = create_model(f"{input_model.__name__}Small", **{  # type: ignore[call-overload]
            n: (f.annotation, f) for n, f in input_model.model_fields.items() if n not in large_fields},
        ) if large_fields else None
        self.engine = engine
        self.name = name
        # Declared by the author: a saga runs by the steps of the version it started on (see `fingerprint`).
        self.version = version
        self.input_model = input_model
        self.default_retry = default_retry or RetryPolicy()
        self.default_time_limit = default_time_limit
        # The Celery queue its steps go to, so a saga type can have workers of its own.
        self.queue = queue
        # A task that committed a step runs the next one itself (`saga.continuation`); False sends every step
        # through the broker, as its own message.
        self.continuation = continuation
        self.steps: list[Step] = []
        # What every claim and commit reads of the steps (fingerprint, leases, undo attempts), worked out once
        # per declaration: emptied whenever a step or a compensation is declared.
        self.derived: dict[str, Any] = {}
        REGISTRY[(name, version)] = self

    def step(
        self, fn: StepFn | None = None, *, kind: StepKind | str = StepKind.COMPENSABLE, name: str | None = None,
        retry: RetryPolicy | None = None, time_limit: float | None = None, transactional: bool = False,
        needs: tuple[str, ...] = (), depends_on: str | tuple[str, ...] = (),
    ) -> Any:
        """Decorator appending a step; returns the `Step`, whose `compensate_with` declares its undo.

        `depends_on` names the third parties the step calls (`"stripe"`): while one's circuit breaker is open the
        step waits for it, using no attempt, and so does its compensation (`saga.breakers`)."""

        def register(fn: StepFn) -> Step:
            step = Step(
                saga=self, name=fn.__name__, index=len(self.steps), kind=StepKind(kind), fn=fn,
                task_name=name or self.task_name(fn), retry=retry or self.default_retry,
                time_limit=time_limit or self.default_time_limit, transactional=transactional,
                needs=self.check_needs(fn.__name__, needs), depends_on=dependency_names(depends_on),
            )
            self._check_order(step)
            step.task = self.engine.task_for(step, compensating=False)
            self.steps.append(step)
            self.derived.clear()
            return step

        return register(fn) if fn is not None else register

    def task_name(self, fn: StepFn) -> str:
        """`module.function`, as Celery names tasks (a script run as `__main__` is named for its app), with
        `.v<N>` after it from version 2 on, so versions declared side by side have tasks of their own."""
        base = str(self.engine.app.gen_task_name(fn.__name__, fn.__module__))
        return base if self.version == 1 else f"{base}.v{self.version}"

    @property
    def fingerprint(self) -> str:
        """The steps' names, kinds and order, digested: recorded when a saga starts, so that a worker whose
        declaration of that version has other steps never runs it."""
        if "fingerprint" not in self.derived:
            shape = [[s.name, s.kind.value] for s in self.steps]
            self.derived["fingerprint"] = hashlib.sha256(json.dumps(shape).encode()).hexdigest()[:16]
        return self.derived["fingerprint"]

    def _check_order(self, new: Step) -> None:
        if any(s.name == new.name for s in self.steps):
            raise ValueError(f"saga {self.name!r} already has a step named {new.name!r}")
        kinds = [s.kind for s in self.steps]
        if new.kind is StepKind.PIVOT and StepKind.PIVOT in kinds:
            raise ValueError(f"saga {self.name!r} can have only one pivot step")
        if new.kind is not StepKind.RETRIABLE and StepKind.RETRIABLE in kinds:
            raise ValueError(f"step {new.name!r}: only retriable steps may follow a retriable step")
        if new.kind is StepKind.COMPENSABLE and StepKind.PIVOT in kinds:
            raise ValueError(f"step {new.name!r}: only retriable steps may follow the pivot")

    def check(self) -> None:
        """Refuse a saga type that cannot run: no steps, or a compensable step without a compensation."""
        if not self.steps:
            raise ValueError(f"saga {self.name!r} has no steps")
        for s in self.steps:
            if s.kind is StepKind.COMPENSABLE and s.compensation is None:
                raise ValueError(f"compensable step {s.name!r} of saga {self.name!r} has no compensation")

    def check_needs(self, body: str, needs: tuple[str, ...]) -> tuple[str, ...]:
        wrong = [f for f in needs if f not in self.large_fields]
        if wrong:
            raise ValueError(f"{body!r} of saga {self.name!r} needs {wrong[0]!r}, which is not one of its "
                             f"large_fields {self.large_fields}")
        return tuple(needs)

    def split_input(self, payload: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The input as stored: the fields every step gets, and the large ones (None if the type has none)."""
        if not self.large_fields:
            return payload, None
        return ({k: v for k, v in payload.items() if k not in self.large_fields},
                {k: v for k, v in payload.items() if k in self.large_fields})

    def step_input(self, stored: dict[str, Any], large: dict[str, Any] | None, needs: tuple[str, ...]) -> InputT:
        """A step's `ctx.input`: validated whole where the step needs large fields (or there are none), else
        the other fields typed and each large field a `LargeField` that says it was not loaded."""
        if needs or self._small_model is None:
            return self.input_model.model_validate({**stored, **(large or {})})
        small = self._small_model.model_validate(stored)
        return self.input_model.model_construct(
            **dict(small), **{f: LargeField(f) for f in self.large_fields})

    def validate_input(self, data: Any) -> InputT:
        """The parsed input, or InvalidInput naming every field that is wrong."""
        try:
            return self.input_model.model_validate(data)
        except ValidationError as exc:
            problems = [
                {"field": ".".join(str(p) for p in e["loc"]) or "input", "message": e["msg"]} for e in exc.errors()
            ]
            summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
            raise InvalidInput(f"invalid input for saga {self.name!r}: {summary}", problems) from None

    @property
    def longest_lease(self) -> float:
        """The longest a step or compensation of this type may hold its lease."""
        if "longest_lease" not in self.derived:
            self.derived["longest_lease"] = max(
                (max(s.lease_seconds, s.compensation_lease_seconds) for s in self.steps), default=0.0)
        return self.derived["longest_lease"]

    @property
    def undo_attempts(self) -> list[int]:
        """Each step's most compensation attempts, by index (0: nothing to undo)."""
        if "undo_attempts" not in self.derived:
            self.derived["undo_attempts"] = [s.compensation.retry.max_attempts if s.compensation else 0
                                             for s in self.steps]
        return self.derived["undo_attempts"]


def versions_of(name: str) -> list[int]:
    """The versions of saga type `name` declared in this process, oldest first."""
    return sorted(v for n, v in REGISTRY if n == name)


def get_saga_type(name: str, version: int | None = None) -> SagaType[Any]:
    """The saga type's declaration of `version` (default: the newest, which new sagas start on)."""
    declared = versions_of(name)
    if not declared:
        known = ", ".join(sorted({n for n, _ in REGISTRY})) or "none"
        raise UnknownSagaType(f"unknown saga type {name!r} (known: {known})")
    if version is None:
        version = declared[-1]
    elif version not in declared:
        raise VersionNotDeclared(f"saga type {name!r} version {version} is not declared here (declared: "
                                 f"{', '.join(map(str, declared))})", {"version": version, "declared": declared})
    saga_type = REGISTRY[(name, version)]
    saga_type.check()
    return saga_type
