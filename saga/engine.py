"""`Sagas`: the engine bound to a Celery app a team already runs.

    app = Celery("shop", broker="redis://127.0.0.1:6379/0")
    sagas = Sagas(app, database_url="postgresql+psycopg://postgres@127.0.0.1:5432/shop")
    orders = sagas.saga_type("order", Order)
"""

from __future__ import annotations

from typing import Any, TypeVar

from celery.signals import beat_init, worker_init, worker_process_init, worker_process_shutdown
from pydantic import BaseModel

from saga import (
    breakers,
    continuation,
    db,
    engine_tasks,
    execution,
    logs,
    metrics,
    queues,
    recovery,
    settings,
    task_events,
    tracing,
    worker_checks,
)
from saga.actions import COMPENSATION, FORWARD, TASKS
from saga.definitions import HARD_LIMIT_GRACE, SagaType, Step
from saga.errors import ConfigurationError, StepFailed

InputT = TypeVar("InputT", bound=BaseModel)
# The engines bound in this process, one per Celery app.
BOUND: list[Sagas] = []


class Sagas:
    """Registers the engine's tasks on `app`, recovery in its beat process, and a check of its settings at
    worker start; saga types declared with `saga_type` get one Celery task per step and compensation on `app`.

    `database_url` and the other keyword arguments are engine settings (`saga.settings.Settings`); any left
    out come from `SAGA_*` environment variables (`SAGA_DATABASE_URL`, ...). A bad setting, or one that needs an
    extra that is not installed, raises `ConfigurationError` naming it.
    """

    def __init__(self, app: Any, *, database_url: str | None = None, **options: Any) -> None:
        self.app = app
        configured = settings.configure(database_url=database_url, **options)
        if configured.metrics_port and not metrics.AVAILABLE:
            raise ConfigurationError("bad setting SAGA_METRICS_PORT: needs the metrics extra "
                                     "(pip install 'celery-sagas[metrics]')")
        if configured.tracing and not tracing.available():
            raise ConfigurationError("bad setting SAGA_TRACING: needs the tracing extra "
                                     "(pip install 'celery-sagas[tracing]')")
        BOUND[:] = [s for s in BOUND if s.app is not app] + [self]
        db.dispose()
        engine_tasks.register(app)
        worker_checks.install(app)
        queues.install(app)
        task_events.install(app)
        logs.install(json_lines=settings.get_settings().log_format == "json")

        # Recovery runs in beat's own process, not as a task beat sends: a task every few seconds would fill
        # Flower's task list with `saga.recover` rows and cost a broker round trip each time.
        def start_beat(sender: Any = None, **_: Any) -> None:
            if getattr(sender, "app", None) is app:
                configured = settings.get_settings()
                if configured.metrics_port:
                    metrics.serve(configured.metrics_port, pool=False)
                if configured.tracing:
                    tracing.install("saga-beat")
                recovery.start_loop(configured.recovery_interval)

        def start_worker(sender: Any = None, **_: Any) -> None:
            port = settings.get_settings().metrics_port
            if getattr(sender, "app", None) is app and port:
                metrics.serve(port, pool=True)

        beat_init.connect(start_beat, weak=False)
        worker_init.connect(start_worker, weak=False)
        if settings.get_settings().tracing:  # in each pool process: the exporter's thread does not survive a fork
            worker_process_init.connect(lambda **_: tracing.install("saga-worker"), weak=False)
            worker_process_shutdown.connect(lambda **_: tracing.flush(), weak=False)

    @property
    def settings(self) -> settings.Settings:
        """The engine's settings in this process."""
        return settings.get_settings()

    def migrate(self) -> None:
        """Create or upgrade the ledger's tables in the database (what `saga migrate` does)."""
        from saga import migrate

        migrate.upgrade(self.settings.database_url)

    def saga_type(self, name: str, input_model: type[InputT], **options: Any) -> SagaType[InputT]:
        """Declare a saga type (see `SagaType` for the options); declare its steps with `@<type>.step`."""
        return SagaType(self, name, input_model, **options)

    def dependency(self, name: str, *, failures: int = 5, cooldown: float = 30.0,
                   max_cooldown: float = 300.0) -> breakers.Dependency:
        """Set the circuit breaker of a third party that steps name in `depends_on`: open after `failures`
        consecutive transient failures, for `cooldown` seconds (doubled by each failed probe, up to
        `max_cooldown`). Undeclared names have these defaults; `SAGA_BREAKERS` overrides either."""
        return breakers.declare(name, failures=failures, cooldown=cooldown, max_cooldown=max_cooldown)

    def task_for(self, step: Step, *, compensating: bool) -> Any:
        """Register the Celery task that runs one step (or its compensation) for a given saga id."""
        comp = step.compensation if compensating else None
        task_name = comp.task_name if comp else step.task_name
        time_limit = comp.time_limit if comp else step.time_limit
        if not comp and step.saga.continuation:  # the message may run later steps, each under its own limits
            time_limit = continuation.message_time_limit(step)
        if task_name in TASKS:
            raise ValueError(f"task name {task_name!r} is used by two steps")

        def run(task: Any, saga_id: str, commit: dict[str, Any] | None = None, claim_first: bool = False,
                at: str | None = None) -> Any:
            if compensating:
                return execution.run_compensation(task, step, saga_id, commit, claim_first)
            return execution.run_step(task, step, saga_id, commit, claim_first, at)

        TASKS[task_name] = (step, COMPENSATION if compensating else FORWARD)
        run.__name__ = task_name.rsplit(".", 1)[-1]
        run.__doc__ = (comp.fn if comp else step.fn).__doc__
        return self.app.task(
            run, name=task_name, bind=True, shared=False, typing=False,
            soft_time_limit=time_limit, time_limit=time_limit + HARD_LIMIT_GRACE,
            throws=(StepFailed,),
            max_retries=None,  # attempts are counted in the ledger, not by Celery
            # Whatever the app's defaults: a step's message is acked only once the step ran, a worker that
            # dies mid-step requeues it, and a failed or timed-out one is acked (the ledger decides what next).
            acks_late=True, reject_on_worker_lost=True, acks_on_failure=True, acks_on_timeout=True,
        )


def find_sagas(target: str) -> Sagas:
    """The `Sagas` of the Celery app that `target` names, as `celery -A target` finds it (`module`,
    `module:app`, `package.module.attribute`), with the modules its `imports`/`include` settings list loaded, so
    every saga type it declares is known. `ConfigurationError` if that app has none."""
    from celery.app.utils import find_app

    try:
        app = find_app(target)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"cannot load the Celery app {target!r}: {exc}") from exc
    app.loader.import_default_modules()
    for bound in BOUND:
        if bound.app is app:
            return bound
    raise ConfigurationError(f"the Celery app {target!r} has no sagas: call saga.Sagas(app) where it is defined")
