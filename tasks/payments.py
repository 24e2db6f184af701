"""Charging the card through Stripe (the pivot), and undoing the charge when the saga is undone.

The charge is two calls: create the PaymentIntent (which charges nothing), checkpoint its id in the ledger,
then confirm it. Every later attempt, and the compensation, starts from that id and asks Stripe where the
payment stands, instead of trusting a reply that may have been lost or an idempotency key that Stripe keeps
for only 24 hours. A body that lost its claim is stopped at the checkpoint, before it could confirm.

Idempotency keys: Stripe keeps the first answer to a key, a 500 included, and replays it. The create, the one
call that would make a second object, keeps its key across attempts (so a create whose answer was lost is
replayed, not repeated) and moves to a new one only after Stripe answered it with a 5xx. Confirm, cancel and
refund are harmless to repeat by Stripe's own rules (a PaymentIntent succeeds once, a charge is never refunded
beyond its amount), so each attempt sends them under a key of its own and no attempt inherits an earlier
attempt's saved error.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import stripe

from saga import NeedsInput, PermanentError, RetryPolicy, StepContext, TransientError
from tasks.settings import job_posting_settings

TIME_LIMIT = 10.0
RETRY = RetryPolicy(max_attempts=8, initial_delay=0.5, multiplier=2.0, max_delay=8.0,
                    transient=(TransientError,))
# PaymentIntent statuses from which a confirm may still charge, and from which Stripe lets us cancel.
CONFIRMABLE = ("requires_payment_method", "requires_confirmation", "requires_action")
CANCELABLE = (*CONFIRMABLE, "requires_capture")


@lru_cache(maxsize=1)
def _stripe() -> stripe.StripeClient:
    settings = job_posting_settings()
    # Our retry policy decides about retries (always with the same idempotency key), so the SDK makes one
    # attempt; its timeout is above the step's time limit, which is what cuts a hanging call short.
    return stripe.StripeClient(
        settings.stripe_api_key, base_addresses={"api": settings.stripe_api_base}, max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=TIME_LIMIT * 3),
    )


def _classified(exc: stripe.StripeError) -> Exception:
    """The error a tenant may see for a Stripe failure: its kind, a decline code or an HTTP status, never Stripe's
    text; raised from `exc`, so the ledger keeps Stripe's own words for operators."""
    if isinstance(exc, stripe.CardError):
        reason = f"card declined: {getattr(exc.error, 'decline_code', None) or exc.code}"
        wait = job_posting_settings().payment_retry_seconds
        if wait:
            # The PaymentIntent stays, unconfirmed: the client's next card confirms it, an undo cancels it.
            return NeedsInput("payment_method", reason=reason, within=wait, effect_unknown=True)
        return PermanentError(reason)
    if isinstance(exc, stripe.RateLimitError):  # 429 includes `lock_timeout`
        return TransientError("Stripe rate limit (429)")
    if isinstance(exc, stripe.APIConnectionError):
        return TransientError("Stripe unreachable")
    # The SDK reports a 409 (a request with the same idempotency key still in progress) as an APIError too.
    if isinstance(exc, stripe.APIError) or (exc.http_status or 0) >= 500:
        return TransientError(f"Stripe unavailable ({exc.http_status})")
    return PermanentError(f"Stripe refused the request: {type(exc).__name__} ({exc.http_status})", effect_unknown=True)


def _unexpected_state(exc: stripe.StripeError) -> bool:
    """Stripe refused because the PaymentIntent moved on (confirmed, canceled) since we last looked."""
    return getattr(exc, "code", None) == "payment_intent_unexpected_state"


def _create_params(ctx: StepContext[Any]) -> dict[str, Any]:
    data = ctx.input
    return {
        "amount": data.amount_cents, "currency": data.currency, "payment_method": data.payment_method,
        "payment_method_types": ["card"], "description": f"Job posting: {data.title} at {data.company}",
        "metadata": {"saga_id": str(ctx.saga_id)},
    }


def charge_payment(ctx: StepContext[Any]) -> dict[str, Any]:
    """Create the PaymentIntent, checkpoint its id, confirm it; a later attempt resumes from the id."""
    client = _stripe().v1.payment_intents
    try:
        pi_id = ctx.checkpoints.get("payment_intent")
        if pi_id is None:
            intent = _create(ctx)
            ctx.checkpoint(payment_intent=intent.id)  # from here on the compensation can find it
        else:
            intent = client.retrieve(pi_id)
        if intent.status in CONFIRMABLE:
            try:
                intent = client.confirm(intent.id, {"payment_method": ctx.input.payment_method},
                                        {"idempotency_key": f"{ctx.attempt_key}:confirm"})
            except stripe.InvalidRequestError as exc:
                if not _unexpected_state(exc):
                    raise
                intent = client.retrieve(intent.id)  # another attempt's confirm got there first
    except stripe.StripeError as exc:
        raise _classified(exc) from exc
    if intent.status == "canceled":
        raise PermanentError(f"payment {intent.id} was canceled")
    if intent.status != "succeeded":
        raise PermanentError(f"payment {intent.id} ended {intent.status}", effect_unknown=True)
    return {"payment_intent": intent.id, "amount_cents": intent.amount, "currency": intent.currency}


def _create(ctx: StepContext[Any]) -> Any:
    """The PaymentIntent, created under the step's create key of the current generation."""
    generation = int(ctx.checkpoints.get("create_generation", 0))
    key = f"{ctx.idempotency_key}:create" + (f":{generation}" if generation else "")
    try:
        return _stripe().v1.payment_intents.create(_create_params(ctx), {"idempotency_key": key})
    except stripe.StripeError as exc:
        if (exc.http_status or 0) >= 500:
            # Stripe keeps this answer for the key: the next attempt asks under a new one. If the 5xx hid a
            # create that happened, that PaymentIntent is never confirmed (only the checkpointed one is).
            ctx.checkpoint(create_generation=generation + 1)
        raise


def refund_payment(ctx: StepContext[Any]) -> dict[str, Any]:
    """Undo the charge, whatever became of it: cancel the PaymentIntent while it can still be confirmed,
    refund it once it succeeded, and finish only when Stripe reports it canceled or fully refunded."""
    pi_id = ctx.checkpoints.get("payment_intent") or (ctx.result or {}).get("payment_intent")
    if pi_id is None:
        # The charge confirms only after checkpointing the id, under a live claim: with no id in the ledger,
        # no confirm was ever sent, so no money moved (a PaymentIntent the create made stays unconfirmed).
        return {"payment_intent": None, "outcome": "nothing charged: no PaymentIntent was confirmed"}
    client = _stripe().v1
    try:
        intent = client.payment_intents.retrieve(pi_id)
        if intent.status in CANCELABLE:
            try:
                intent = client.payment_intents.cancel(pi_id, {"cancellation_reason": "abandoned"},
                                                       {"idempotency_key": f"{ctx.attempt_key}:cancel"})
            except stripe.InvalidRequestError as exc:
                if not _unexpected_state(exc):
                    raise
                intent = client.payment_intents.retrieve(pi_id)  # confirmed meanwhile: refund it below
        if intent.status == "canceled":
            return {"payment_intent": pi_id, "outcome": "canceled: nothing charged"}
        if intent.status != "succeeded":
            raise TransientError(f"payment {pi_id} is {intent.status}; looking again later")
        return _refund_rest(ctx, pi_id, intent.amount_received)
    except stripe.StripeError as exc:
        raise _classified(exc) from exc


def _refund_rest(ctx: StepContext[Any], pi_id: str, received: int) -> dict[str, Any]:
    """Refund whatever of `received` is not refunded yet, judged from Stripe's own list of refunds."""
    refunds = _stripe().v1.refunds
    existing = list(refunds.list({"payment_intent": pi_id, "limit": 100}).auto_paging_iter())
    succeeded = [r for r in existing if r.status == "succeeded"]
    pending = [r.id for r in existing if r.status in ("pending", "requires_action")]
    done = sum(r.amount for r in succeeded)
    if done < received and not pending:
        try:
            refund = refunds.create(
                {"payment_intent": pi_id, "amount": received - done, "metadata": {"saga_id": str(ctx.saga_id)}},
                {"idempotency_key": f"{ctx.attempt_key}:refund:{len(existing)}"})
        except stripe.InvalidRequestError as exc:
            if getattr(exc, "code", None) not in ("charge_already_refunded", "amount_too_large"):
                raise
            # A refund we did not see yet (an earlier attempt's, whose answer was lost) got there first.
            raise TransientError(f"payment {pi_id} was refunded meanwhile; counting the refunds again") from exc
        ctx.checkpoint(refund=refund.id)
        if refund.status == "succeeded":
            succeeded.append(refund)
            done += refund.amount
        else:
            pending.append(refund.id)
    if pending:
        raise TransientError(f"refund {', '.join(pending)} of payment {pi_id} is still pending")
    return {"payment_intent": pi_id, "outcome": "refunded", "amount_refunded": done,
            "refunds": [r.id for r in succeeded]}
