"""OpenTelemetry traces, one per saga, when `SAGA_TRACING=true` (the `tracing` extra).

A saga's trace id is its id: whichever process sends its steps (the API, a worker, recovery in beat), it sends
them inside that trace, so the Celery instrumentation's publish and run spans of every step and compensation,
and the engine's span of each attempt, land in one trace, under a root span `saga <type>` written at accept.
Spans go out over OTLP/HTTP to `OTEL_EXPORTER_OTLP_ENDPOINT` (the standard `OTEL_*` variables apply).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any
from uuid import UUID

from celery.exceptions import Ignore, Retry

from saga.errors import ConfigurationError

_provider: Any = None
# The ids the next span takes (the root span of a saga: trace id and span id both derived from the saga id).
_PINNED: ContextVar[tuple[int, int] | None] = ContextVar("saga_trace_ids", default=None)
_FLOW = (Ignore, Retry)  # how a task ends a message early on purpose: not an error in its span


def install(service: str) -> None:
    """Export this process's spans and trace its Celery tasks (`service` unless OTEL_SERVICE_NAME is set)."""
    global _provider
    if _provider is not None:
        return
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
    except ImportError as exc:
        raise ConfigurationError(f"bad setting SAGA_TRACING: needs the tracing extra "
                                 f"(pip install 'celery-sagas[tracing]'): {exc}") from None

    class SagaIds(RandomIdGenerator):
        """Random ids, except where a saga's root span pins them."""

        def generate_trace_id(self) -> int:
            pinned = _PINNED.get()
            return pinned[0] if pinned else super().generate_trace_id()

        def generate_span_id(self) -> int:
            pinned = _PINNED.get()
            return pinned[1] if pinned else super().generate_span_id()

    name = os.environ.get("OTEL_SERVICE_NAME") or service
    _provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}), id_generator=SagaIds())
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(_provider)
    CeleryInstrumentor().instrument(tracer_provider=_provider)


def available() -> bool:
    """Whether the `tracing` extra is installed."""
    try:
        return importlib.util.find_spec("opentelemetry.sdk") is not None
    except ModuleNotFoundError:  # not even the opentelemetry namespace
        return False


def instrument_api(app: Any) -> None:
    """Trace the API's requests (FastAPI instrumentation)."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, tracer_provider=_provider)


def flush() -> None:
    """Send the spans still buffered (a pool process about to exit skips atexit handlers)."""
    if _provider is not None:
        _provider.shutdown()


def _ids(saga_id: UUID) -> tuple[int, int]:
    return saga_id.int, (saga_id.int & 0xFFFF_FFFF_FFFF_FFFF) or 1


def accepted(saga_id: UUID, saga_type: str, tenant: str) -> None:
    """Write the saga's root span, linked to the span that accepted it (the API request)."""
    if _provider is None:
        return
    from opentelemetry import context, trace

    caller = trace.get_current_span().get_span_context()
    token = _PINNED.set(_ids(saga_id))
    try:
        span = _provider.get_tracer("saga").start_span(
            f"saga {saga_type}", context=context.Context(), kind=trace.SpanKind.INTERNAL,
            links=[trace.Link(caller)] if caller.is_valid else None,
            attributes={"saga.id": str(saga_id), "saga.type": saga_type, "saga.tenant": tenant},
        )
    finally:
        _PINNED.reset(token)
    span.end()


def in_saga(saga_id: UUID) -> Any:
    """Context in which messages sent for the saga join its trace (a no-op without tracing)."""
    if _provider is None:
        return nullcontext()
    return _attached(saga_id)


@contextmanager
def _attached(saga_id: UUID) -> Iterator[None]:
    from opentelemetry import context, trace

    trace_int, root = _ids(saga_id)
    if trace.get_current_span().get_span_context().trace_id == trace_int:
        yield  # already inside the saga's trace (a worker running one of its steps)
        return
    parent = trace.NonRecordingSpan(trace.SpanContext(
        trace_id=trace_int, span_id=root, is_remote=True, trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED)))
    token = context.attach(trace.set_span_in_context(parent))
    try:
        yield
    finally:
        context.detach(token)


def attempt_span(saga_id: UUID, name: str, fields: dict[str, Any]) -> Any:
    """A span around one attempt of a step or compensation, carrying `fields` (saga id, step, attempt...)."""
    if _provider is None:
        return nullcontext()
    return _attempt(saga_id, name, fields)


@contextmanager
def _attempt(saga_id: UUID, name: str, fields: dict[str, Any]) -> Iterator[None]:
    from opentelemetry import trace

    with in_saga(saga_id), _provider.get_tracer("saga").start_as_current_span(
        name, record_exception=False, set_status_on_exception=False,
    ) as span:
        try:
            yield
        except _FLOW:
            raise
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            span.set_attributes({f"saga.{k.removeprefix('saga_')}": str(v) for k, v in fields.items() if v is not None})
