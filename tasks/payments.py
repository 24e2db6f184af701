"""Charging the card through Stripe (the pivot) and refunding it when the saga is undone.

The charge is two idempotent calls, create then confirm, so that a compensation can always find the
PaymentIntent by replaying the create (which charges nothing) instead of searching for it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import stripe

from saga import PermanentError, RetryPolicy, StepContext, TransientError
from saga.settings import get_settings

TIME_LIMIT = 10.0
RETRY = RetryPolicy(max_attempts=8, initial_delay=0.5, multiplier=2.0, max_delay=8.0,
                    transient=(TransientError,))


@lru_cache(maxsize=1)
def _stripe() -> stripe.StripeClient:
    settings = get_settings()
    # Our retry policy decides about retries (always with the same idempotency key), so the SDK makes one
    # attempt; its timeout is above the step's time limit, which is what cuts a hanging call short.
    return stripe.StripeClient(
        settings.stripe_api_key, base_addresses={"api": settings.stripe_api_base}, max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=TIME_LIMIT * 3),
    )


def _classified(exc: stripe.StripeError) -> Exception:
    if isinstance(exc, stripe.CardError):
        return PermanentError(f"card declined: {exc.code}: {exc.user_message or exc}")
    if isinstance(exc, (stripe.RateLimitError, stripe.APIConnectionError)):
        return TransientError(f"Stripe {type(exc).__name__}: {exc}")
    if isinstance(exc, stripe.IdempotencyError) and exc.http_status == 409:
        return TransientError("Stripe is still processing an earlier request with this idempotency key")
    if isinstance(exc, stripe.APIError) or (exc.http_status or 0) >= 500:
        return TransientError(f"Stripe {exc.http_status}: {exc}")
    return PermanentError(f"Stripe refused: {type(exc).__name__}: {exc}", effect_unknown=True)


def _create_params(ctx: StepContext[Any]) -> dict[str, Any]:
    data = ctx.input
    return {
        "amount": data.amount_cents, "currency": data.currency, "payment_method": data.payment_method,
        "payment_method_types": ["card"], "description": f"Job posting: {data.title} at {data.company}",
        "metadata": {"saga_id": str(ctx.saga_id)},
    }


def _payment_intent(ctx: StepContext[Any], key: str) -> Any:
    """The saga's PaymentIntent: created unconfirmed on first call, replayed by Stripe after that."""
    return _stripe().v1.payment_intents.create(_create_params(ctx), {"idempotency_key": f"{key}:create"})


def charge_payment(ctx: StepContext[Any]) -> dict[str, Any]:
    """Create and confirm the PaymentIntent, each call under an idempotency key derived from the step."""
    try:
        intent = _payment_intent(ctx, ctx.idempotency_key)
        if intent.status != "succeeded":
            intent = _stripe().v1.payment_intents.confirm(
                intent.id, {"payment_method": ctx.input.payment_method},
                {"idempotency_key": f"{ctx.idempotency_key}:confirm"},
            )
    except stripe.StripeError as exc:
        raise _classified(exc) from exc
    if intent.status != "succeeded":
        raise PermanentError(f"payment {intent.id} ended {intent.status}", effect_unknown=True)
    return {"payment_intent": intent.id, "amount_cents": intent.amount, "currency": intent.currency}


def refund_payment(ctx: StepContext[Any]) -> dict[str, Any]:
    """Refund the charge if it happened; runs only when its outcome is unknown or the saga was cancelled."""
    forward_key = ctx.idempotency_key.removesuffix(":compensate")
    try:
        intent = _payment_intent(ctx, forward_key)
        intent = _stripe().v1.payment_intents.retrieve(intent.id)
        if intent.status != "succeeded":
            return {"payment_intent": intent.id, "refund": None, "status": intent.status}
        refund = _stripe().v1.refunds.create(
            {"payment_intent": intent.id, "metadata": {"saga_id": str(ctx.saga_id)}},
            {"idempotency_key": f"{ctx.idempotency_key}:refund"},
        )
    except stripe.StripeError as exc:
        if getattr(exc, "code", None) == "charge_already_refunded":
            return {"payment_intent": intent.id, "refund": "already refunded"}
        raise _classified(exc) from exc
    return {"payment_intent": intent.id, "refund": refund.id}
