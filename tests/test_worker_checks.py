"""What `Sagas(app)` adds to a Celery app, and the settings a worker of it refuses to start with."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from celery import Celery
from pydantic import BaseModel

from saga import Sagas, StepContext, settings, worker_checks
from tests.conftest import ROOT


class Item(BaseModel):
    n: int


def safe_app(**conf: object) -> Celery:
    app = Celery("shop", broker="redis://127.0.0.1:6379/0")
    app.conf.update({"worker_prefetch_multiplier": 1, "worker_cancel_long_running_tasks_on_connection_loss": True,
                     **conf})
    return app


def test_sagas_registers_the_engine_on_any_celery_app(fresh: None) -> None:
    app = safe_app(task_acks_late=False)  # the app's own default stays false for its other tasks
    sagas = Sagas(app)
    kinds = sagas.saga_type("other_app_kinds", Item)

    @kinds.step(kind="pivot")
    def only(ctx: StepContext[Item]) -> None:
        return None

    assert {"saga.on_error", "saga.finish_compensation", "saga.recover"} <= set(app.tasks)
    task = app.tasks[f"{__name__}.only"]
    assert (task.acks_late, task.reject_on_worker_lost, task.acks_on_failure, task.acks_on_timeout) == (
        True, True, True, True)
    assert "saga.recover" not in [entry["task"] for entry in app.conf.beat_schedule.values()]  # beat runs it
    assert worker_checks.problems(app) == []


def test_a_script_run_as_main_names_its_tasks_as_its_worker_does(fresh: None) -> None:
    """`python shop.py` declares the types in `__main__`; `celery -A shop` in `shop`: the names must agree."""
    sagas = Sagas(safe_app())
    scripted = sagas.saga_type("scripted", Item)

    def ship(ctx: StepContext[Item]) -> None:
        return None

    ship.__module__ = "__main__"
    assert scripted.step(ship, kind="pivot").task_name == "shop.ship"


@pytest.mark.parametrize("conf, pool, prefetch, names", [
    ({"task_always_eager": True}, "prefork", None, "task_always_eager"),
    ({}, "solo", None, "solo pool"),
    ({}, "threads", None, "threads pool"),
    ({}, "prefork", 4, "worker_prefetch_multiplier=4"),
    ({"worker_cancel_long_running_tasks_on_connection_loss": False}, "prefork", None,
     "worker_cancel_long_running_tasks_on_connection_loss=False"),
    ({"broker_transport_options": {"visibility_timeout": 10}}, "prefork", None,
     "broker_transport_options['visibility_timeout']=10s"),
    ({"broker_url": "amqp://guest:guest@127.0.0.1:5672//", "consumer_timeout": 20}, "prefork", None,
     "SAGA_CONSUMER_TIMEOUT=20s (RabbitMQ's consumer_timeout) is not above the"),
])
def test_each_unsafe_setting_is_named(fresh: None, conf: dict[str, object], pool: str, prefetch: int | None,
                                      names: str) -> None:
    engine = {"consumer_timeout": conf.pop("consumer_timeout")} if "consumer_timeout" in conf else {}
    sagas = Sagas(safe_app(**conf), **engine)
    slow = sagas.saga_type("slow_for_checks", Item, default_time_limit=30)
    slow.step(lambda ctx: None, kind="pivot", name="checks.slow")
    try:
        found = worker_checks.problems(sagas.app, pool=pool, prefetch=prefetch)
    finally:
        settings.configure(consumer_timeout=settings.Settings.model_fields["consumer_timeout"].default)
    assert len(found) == 1 and names in found[0], found


def test_annotations_that_drop_late_acks_are_refused(fresh: None) -> None:
    sagas = Sagas(safe_app(task_annotations={"checks.annotated": {"acks_late": False}}))
    sagas.saga_type("annotated", Item).step(lambda ctx: None, kind="pivot", name="checks.annotated")
    found = worker_checks.problems(sagas.app)
    assert len(found) == 1 and "task checks.annotated has acks_late=False" in found[0], found


def test_a_real_worker_refuses_to_start_with_prefetch_above_one() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "--concurrency=1", "--queues=nobody",
         "--prefetch-multiplier=4"],
        cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode != 0
    assert "saga: worker_prefetch_multiplier=4: a worker would hold steps" in result.stdout + result.stderr


def test_a_misspelt_setting_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match="unknown engine setting 'recovery_intervl'"):
        Sagas(safe_app(), recovery_intervl=1)


def test_a_breaker_cool_down_longer_than_the_visibility_timeout_is_refused(fresh: None) -> None:
    """A step waiting for an open breaker holds its retried message unacked until the breaker half-opens."""
    from saga import breakers

    sagas = Sagas(safe_app())
    sagas.dependency("slow_partner", cooldown=60, max_cooldown=4000)
    try:
        sagas.saga_type("waits_long", Item).step(lambda ctx: None, kind="pivot", name="checks.waits_long",
                                                 depends_on="slow_partner")
        found = worker_checks.problems(sagas.app)
        assert len(found) == 1 and re.search(r"visibility_timeout'\]=3600s is not above the 40\d\ds that task "
                                             r"checks\.waits_long .*breaker cool-down", found[0]), found
    finally:
        breakers.DECLARED.pop("slow_partner", None)
