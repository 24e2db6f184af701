"""The Stripe stand-in's records and rules: PaymentIntents, charges and refunds, shaped and checked as Stripe does.

Everything here is plain data under one lock; `stripe_server` adds HTTP, idempotency keys and faults on top.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import string
import threading
import time
from pathlib import Path
from typing import Any

Obj = dict[str, Any]

# Stripe's test payment method tokens: brand and last4 for the ones that succeed,
# (error code, decline code, message) for the ones that are declined.
CARDS: dict[str, tuple[str, str]] = {
    "pm_card_visa": ("visa", "4242"),
    "pm_card_visa_debit": ("visa", "5556"),
    "pm_card_mastercard": ("mastercard", "4444"),
    "pm_card_amex": ("amex", "8431"),
    "pm_card_us": ("visa", "4242"),
}
DECLINES: dict[str, tuple[str, str, str]] = {
    "pm_card_chargeDeclined": ("card_declined", "generic_decline", "Your card was declined."),
    "pm_card_chargeDeclinedInsufficientFunds": (
        "card_declined", "insufficient_funds", "Your card has insufficient funds."),
    "pm_card_chargeDeclinedFraudulent": ("card_declined", "fraudulent", "Your card was declined."),
    "pm_card_chargeDeclinedLostCard": ("card_declined", "lost_card", "Your card was declined."),
    "pm_card_chargeDeclinedStolenCard": ("card_declined", "stolen_card", "Your card was declined."),
    "pm_card_chargeDeclinedExpiredCard": ("expired_card", "expired_card", "Your card has expired."),
    "pm_card_chargeDeclinedIncorrectCvc": (
        "incorrect_cvc", "incorrect_cvc", "Your card's security code is incorrect."),
    "pm_card_chargeDeclinedProcessingError": (
        "processing_error", "processing_error",
        "An error occurred while processing your card. Try again in a little bit."),
}
# Stripe's minimum charge per currency, in the currency's smallest unit (stripe.com/docs/currencies#minimum-and-maximum-charge-amounts);
# other currencies must come to at least 50 US cents, which 50 units stands in for.
MINIMUM_AMOUNTS = {
    "usd": 50, "aed": 200, "aud": 50, "bgn": 100, "brl": 50, "cad": 50, "chf": 50, "czk": 1500, "dkk": 250,
    "eur": 50, "gbp": 30, "hkd": 400, "huf": 17500, "inr": 50, "jpy": 50, "mxn": 1000, "myr": 200, "nok": 300,
    "nzd": 50, "pln": 200, "ron": 200, "sek": 300, "sgd": 50, "thb": 1000,
}
CANCELLATION_REASONS = {"duplicate", "fraudulent", "requested_by_customer", "abandoned"}
PI_CREATE_PARAMS = {
    "amount", "currency", "payment_method", "confirm", "metadata", "description", "customer", "receipt_email",
    "statement_descriptor", "statement_descriptor_suffix", "capture_method", "confirmation_method",
    "payment_method_types", "automatic_payment_methods", "off_session", "error_on_requires_action",
    "return_url", "setup_future_usage", "shipping", "expand", "transfer_group", "on_behalf_of",
    "application_fee_amount", "transfer_data", "payment_method_options", "mandate_data", "radar_options",
}
PI_CONFIRM_PARAMS = {"payment_method", "return_url", "off_session", "error_on_requires_action", "expand",
                     "receipt_email", "setup_future_usage", "shipping", "payment_method_options", "mandate_data"}
PI_UPDATE_PARAMS = {"metadata", "description", "receipt_email", "expand", "amount", "currency"}
REFUND_PARAMS = {"payment_intent", "charge", "amount", "metadata", "reason", "expand"}
LIST_PARAMS = {"limit", "starting_after", "ending_before", "expand", "created"}


class StripeError(Exception):
    """An answer in Stripe's error shape. `stored` says whether an idempotency key keeps it for replays:
    Stripe keeps the outcome of a request that started executing, not of one that failed validation."""

    def __init__(self, status: int, type_: str, message: str, *, code: str | None = None,
                 param: str | None = None, decline_code: str | None = None, extra: Obj | None = None,
                 stored: bool = False) -> None:
        super().__init__(message)
        self.status, self.stored = status, stored
        fields = {"type": type_, "code": code, "message": message, "param": param, "decline_code": decline_code}
        self.error: Obj = {k: v for k, v in fields.items() if v is not None} | (extra or {})

    def body(self) -> Obj:
        return {"error": self.error}


def invalid(message: str, *, code: str | None = None, param: str | None = None,
            status: int = 400, stored: bool = False) -> StripeError:
    return StripeError(status, "invalid_request_error", message, code=code, param=param, stored=stored)


def missing(kind: str, oid: str, param: str = "id") -> StripeError:
    return invalid(f"No such {kind}: '{oid}'", code="resource_missing", param=param, status=404)


def new_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(24))


def decode_params(pairs: list[tuple[str, str]]) -> Obj:
    """Stripe's form encoding back into nested data: `metadata[k]=v` → dict, `expand[0]=x` → list."""
    root: Obj = {}
    for key, value in pairs:
        head = key.split("[", 1)[0]
        path = [head, *re.findall(r"\[([^\]]*)\]", key)]
        node = root
        for i, part in enumerate(path):
            part = part or str(len(node))
            if i == len(path) - 1:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    result: Obj = _listify(root)
    return result


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    items = {k: _listify(v) for k, v in node.items()}
    if items and all(k.isdigit() for k in items):
        return [items[k] for k in sorted(items, key=int)]
    return items


def _int(params: Obj, name: str, *, minimum: int = 0) -> int | None:
    raw = params.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise invalid(f"Invalid integer: {raw}", code="parameter_invalid_integer", param=name) from None
    if value < minimum:
        raise invalid(f"This value must be greater than or equal to {minimum}.",
                      code="parameter_invalid_integer", param=name)
    return value


def _bool(params: Obj, name: str) -> bool:
    raw = params.get(name, "false")
    if raw not in ("true", "false"):
        raise invalid(f"Invalid boolean: {raw}", code="parameter_invalid_boolean", param=name)
    return bool(raw == "true")


def _metadata(params: Obj, current: Obj | None = None) -> Obj:
    raw = params.get("metadata", {})
    if raw == "":
        return {}
    if not isinstance(raw, dict):
        raise invalid("Invalid metadata: must be a hash", code="parameter_invalid_string", param="metadata")
    merged = dict(current or {}) | raw
    return {k: v for k, v in merged.items() if v != ""}  # "" unsets a key, as on Stripe


def _check_params(params: Obj, allowed: set[str]) -> None:
    for name in params:
        if name not in allowed:
            raise invalid(f"Received unknown parameter: {name}", code="parameter_unknown", param=name)


class _Records(dict[str, Obj]):
    """The records of one kind, by id. Objects are changed in place, so every id looked up or set since the
    last save is noted as possibly changed (listing all of them is a read: no POST changes what it lists)."""

    def __init__(self, kind: str, touched: set[tuple[str, str]]) -> None:
        super().__init__()
        self.kind, self.touched = kind, touched

    def __getitem__(self, key: str) -> Obj:
        self.touched.add((self.kind, key))
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.touched.add((self.kind, key))
        return super().get(key, default)

    def __setitem__(self, key: str, value: Obj) -> None:
        self.touched.add((self.kind, key))
        super().__setitem__(key, value)


class Store:
    """Every PaymentIntent, charge, refund, payment method and stored idempotent response, optionally
    persisted in a journal: each save appends the records it may have changed, one JSON line each, so a save
    costs what changed, not what the store holds (a soak makes thousands). Loading replays the lines."""

    KINDS = ("payment_intents", "charges", "refunds", "payment_methods", "idempotency")

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.lock = threading.RLock()
        self._touched: set[tuple[str, str]] = set()
        self._cleared: list[str] = []
        self.data: dict[str, _Records] = {k: _Records(k, self._touched) for k in self.KINDS}
        if path and path.exists():
            self._replay(path.read_text())
        self._touched.clear()

    def _replay(self, journal: str) -> None:
        for line in journal.splitlines():
            try:
                kind, key, record = json.loads(line)
            except ValueError:
                continue  # the end of a line cut short by a crash mid-write: that save never finished
            if key is None:
                dict.clear(self.data[kind])
            elif record is None:
                dict.pop(self.data[kind], key, None)
            else:
                dict.__setitem__(self.data[kind], key, record)

    def save(self) -> None:
        """Append what may have changed since the last save, and flush it to disk."""
        lines = [json.dumps([kind, None, None]) for kind in self._cleared] + [
            json.dumps([kind, key, dict.get(self.data[kind], key)]) for kind, key in sorted(self._touched)]
        self._cleared.clear()
        self._touched.clear()
        if not self.path or not lines:
            return
        with self.path.open("a") as out:
            out.write("\n".join(lines) + "\n")
            out.flush()
            os.fsync(out.fileno())

    def clear(self, kind: str) -> int:
        """Forget every record of one kind; returns how many there were."""
        with self.lock:
            count = len(self.data[kind])
            dict.clear(self.data[kind])
            self._cleared.append(kind)
            self._touched.difference_update({t for t in self._touched if t[0] == kind})
            self.save()
            return count

    def reset(self) -> None:
        with self.lock:
            for kind in self.KINDS:
                dict.clear(self.data[kind])
            self._cleared.clear()
            self._touched.clear()
            if self.path:
                self.path.write_text("")

    # PaymentIntents

    def create_payment_intent(self, params: Obj) -> Obj:
        _check_params(params, PI_CREATE_PARAMS)
        amount = _int(params, "amount", minimum=1)
        if amount is None:
            raise invalid("Missing required param: amount.", code="parameter_missing", param="amount")
        currency = str(params.get("currency", "")).lower()
        if not currency:
            raise invalid("Missing required param: currency.", code="parameter_missing", param="currency")
        if not re.fullmatch(r"[a-z]{3}", currency):
            raise invalid(f"Invalid currency: {currency}.", code="parameter_invalid_string", param="currency")
        minimum = MINIMUM_AMOUNTS.get(currency, 50)
        if amount < minimum:
            raise invalid(f"Amount must be at least {minimum} in the smallest unit of {currency}",
                          code="amount_too_small", param="amount")
        types = params.get("payment_method_types")
        automatic = params.get("automatic_payment_methods") or ({"enabled": "true"} if not types else None)
        pi: Obj = {
            "id": new_id("pi_"), "object": "payment_intent", "amount": amount, "amount_capturable": 0,
            "amount_received": 0, "application": None, "application_fee_amount": None,
            "automatic_payment_methods": automatic and {
                "enabled": automatic.get("enabled") == "true",
                "allow_redirects": automatic.get("allow_redirects", "always")},
            "canceled_at": None, "cancellation_reason": None, "capture_method": "automatic_async",
            "client_secret": None, "confirmation_method": "automatic", "created": int(time.time()),
            "currency": currency, "customer": params.get("customer"), "description": params.get("description"),
            "last_payment_error": None, "latest_charge": None, "livemode": False,
            "metadata": _metadata(params), "next_action": None, "on_behalf_of": None,
            "payment_method": None, "payment_method_options": {}, "payment_method_types": types or ["card"],
            "processing": None, "receipt_email": params.get("receipt_email"), "review": None,
            "setup_future_usage": None, "shipping": None, "statement_descriptor": None,
            "statement_descriptor_suffix": None, "status": "requires_payment_method", "transfer_data": None,
            "transfer_group": None,
        }
        pi["client_secret"] = f"{pi['id']}_secret_{new_id('')}"
        if params.get("payment_method"):
            pi["payment_method"] = self._payment_method(str(params["payment_method"]))["id"]
            pi["status"] = "requires_confirmation"
        confirm = _bool(params, "confirm")
        if confirm:
            self._check_confirmable(pi, params)
        self.data["payment_intents"][pi["id"]] = pi
        if confirm:
            self._attempt(pi)
        return pi

    def retrieve_payment_intent(self, pi_id: str) -> Obj:
        pi = self.data["payment_intents"].get(pi_id)
        if pi is None:
            raise missing("payment_intent", pi_id)
        return pi

    def update_payment_intent(self, pi_id: str, params: Obj) -> Obj:
        _check_params(params, PI_UPDATE_PARAMS)
        pi = self.retrieve_payment_intent(pi_id)
        pi["metadata"] = _metadata(params, pi["metadata"])
        for name in ("description", "receipt_email"):
            if name in params:
                pi[name] = params[name] or None
        return pi

    def confirm_payment_intent(self, pi_id: str, params: Obj) -> Obj:
        _check_params(params, PI_CONFIRM_PARAMS)
        pi = self.retrieve_payment_intent(pi_id)
        if pi["status"] not in ("requires_payment_method", "requires_confirmation"):
            raise StripeError(400, "invalid_request_error", "You cannot confirm this PaymentIntent because it "
                              f"has a status of {pi['status']}.", code="payment_intent_unexpected_state",
                              extra={"payment_intent": pi}, stored=True)
        if params.get("payment_method"):
            pi["payment_method"] = self._payment_method(str(params["payment_method"]))["id"]
        if not pi["payment_method"]:
            raise invalid("You cannot confirm this PaymentIntent because it's missing a payment method.",
                          code="payment_intent_unexpected_state", param="payment_method")
        self._check_confirmable(pi, params)
        self._attempt(pi)
        return pi

    def cancel_payment_intent(self, pi_id: str, params: Obj) -> Obj:
        _check_params(params, {"cancellation_reason", "expand"})
        reason = params.get("cancellation_reason")
        if reason is not None and reason not in CANCELLATION_REASONS:
            raise invalid(f"Invalid cancellation_reason: must be one of {', '.join(sorted(CANCELLATION_REASONS))}",
                          code="parameter_invalid_string", param="cancellation_reason")
        pi = self.retrieve_payment_intent(pi_id)
        if pi["status"] in ("succeeded", "canceled"):
            raise StripeError(400, "invalid_request_error", "You cannot cancel this PaymentIntent because it "
                              f"has a status of {pi['status']}.", code="payment_intent_unexpected_state",
                              stored=True)
        pi.update(status="canceled", canceled_at=int(time.time()),
                  cancellation_reason=params.get("cancellation_reason"))
        return pi

    def _payment_method(self, pm_id: str) -> Obj:
        """A test token (`pm_card_visa`) becomes a new PaymentMethod with an id of its own, as on Stripe."""
        if pm_id in self.data["payment_methods"]:
            return self.data["payment_methods"][pm_id]
        if pm_id not in CARDS and pm_id not in DECLINES:
            raise missing("PaymentMethod", pm_id, param="payment_method")
        brand, last4 = CARDS.get(pm_id, ("visa", "0002"))
        pm: Obj = {"id": new_id("pm_"), "object": "payment_method", "type": "card", "created": int(time.time()),
              "livemode": False, "card": {"brand": brand, "last4": last4, "exp_month": 12, "exp_year": 2034},
              "token": pm_id}
        self.data["payment_methods"][pm["id"]] = pm
        return pm

    @staticmethod
    def _check_confirmable(pi: Obj, params: Obj) -> None:
        automatic = pi["automatic_payment_methods"]
        redirects = automatic and automatic["enabled"] and automatic["allow_redirects"] != "never"
        if redirects and not params.get("return_url"):
            raise invalid(
                "A `return_url` is required: this PaymentIntent accepts the payment methods enabled in the "
                "Dashboard, some of which redirect. To accept only methods without redirects, create it with "
                "`automatic_payment_methods[enabled]=true` and `automatic_payment_methods[allow_redirects]=never`"
                " (or with `payment_method_types[]=card`).", param="return_url")

    def _attempt(self, pi: Obj) -> None:
        """One charge attempt with the PaymentIntent's payment method; a decline raises the 402 Stripe sends."""
        pm = self.data["payment_methods"][pi["payment_method"]]
        charge = {"id": new_id("ch_"), "object": "charge", "amount": pi["amount"], "amount_refunded": 0,
                  "currency": pi["currency"], "created": int(time.time()), "livemode": False,
                  "payment_intent": pi["id"], "payment_method": pm["id"], "metadata": dict(pi["metadata"]),
                  "refunded": False}
        self.data["charges"][charge["id"]] = charge
        pi["latest_charge"] = charge["id"]
        decline = DECLINES.get(pm["token"])
        if decline is None:
            charge.update(status="succeeded", paid=True, captured=True, amount_captured=pi["amount"],
                          failure_code=None)
            pi.update(status="succeeded", amount_received=pi["amount"], last_payment_error=None)
            return
        code, decline_code, message = decline
        charge.update(status="failed", paid=False, captured=False, amount_captured=0, failure_code=code)
        public_pm = {k: v for k, v in pm.items() if k != "token"}
        error = {"type": "card_error", "code": code, "decline_code": decline_code, "message": message,
                 "charge": charge["id"], "payment_method": public_pm,
                 "doc_url": f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"}
        pi.update(status="requires_payment_method", last_payment_error=error, payment_method=None)
        raise StripeError(402, "card_error", message, code=code, decline_code=decline_code, stored=True,
                          extra={"charge": charge["id"], "doc_url": error["doc_url"], "payment_intent": pi,
                                 "payment_method": public_pm})

    def list_payment_intents(self, params: Obj) -> Obj:
        _check_params(params, LIST_PARAMS | {"customer"})
        items = [pi for pi in self.data["payment_intents"].values()
                 if not params.get("customer") or pi["customer"] == params["customer"]]
        return _page(items, params, "/v1/payment_intents")

    def search_payment_intents(self, params: Obj) -> Obj:
        _check_params(params, {"query", "limit", "page", "expand"})
        if not params.get("query"):
            raise invalid("Missing required param: query.", code="parameter_missing", param="query")
        match = _compile_query(str(params["query"]))
        found = [pi for pi in reversed(self.data["payment_intents"].values()) if match(pi)]
        limit = _int(params, "limit", minimum=1) or 10
        start = int(params.get("page") or 0)
        more = len(found) > start + limit
        return {"object": "search_result", "url": "/v1/payment_intents/search", "has_more": more,
                "next_page": str(start + limit) if more else None, "data": found[start:start + limit]}

    # Charges and refunds

    def retrieve_charge(self, ch_id: str) -> Obj:
        charge = self.data["charges"].get(ch_id)
        if charge is None:
            raise missing("charge", ch_id)
        return charge

    def create_refund(self, params: Obj) -> Obj:
        _check_params(params, REFUND_PARAMS)
        if params.get("payment_intent"):
            pi = self.retrieve_payment_intent(str(params["payment_intent"]))
            if pi["status"] != "succeeded":
                raise StripeError(400, "invalid_request_error", f"This PaymentIntent ({pi['id']}) does not have "
                                  "a successful charge to refund.", code="charge_not_refundable",
                                  param="payment_intent", stored=True)
            charge = self.data["charges"][pi["latest_charge"]]
        elif params.get("charge"):
            charge = self.retrieve_charge(str(params["charge"]))
            if charge["status"] != "succeeded":
                raise StripeError(400, "invalid_request_error", f"Charge {charge['id']} has not succeeded.",
                                  code="charge_not_refundable", param="charge", stored=True)
        else:
            raise invalid("One of the following params should be provided for this request: payment_intent "
                          "or charge.", code="parameter_missing")
        remaining = charge["amount"] - charge["amount_refunded"]
        if remaining <= 0:
            raise StripeError(400, "invalid_request_error", f"Charge {charge['id']} has already been refunded.",
                              code="charge_already_refunded", stored=True)
        amount = _int(params, "amount", minimum=1)
        amount = remaining if amount is None else amount
        if amount > remaining:
            raise StripeError(400, "invalid_request_error", f"Refund amount ({amount}) is greater than "
                              f"unrefunded amount on charge ({remaining})", code="amount_too_large",
                              param="amount", stored=True)
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        refund = {"id": new_id("re_"), "object": "refund", "amount": amount, "balance_transaction": None,
                  "charge": charge["id"], "created": int(time.time()), "currency": charge["currency"],
                  "metadata": _metadata(params), "payment_intent": charge["payment_intent"],
                  "reason": params.get("reason"), "receipt_number": None, "source_transfer_reversal": None,
                  "status": "succeeded", "transfer_reversal": None}
        self.data["refunds"][refund["id"]] = refund
        return refund

    def retrieve_refund(self, re_id: str) -> Obj:
        refund = self.data["refunds"].get(re_id)
        if refund is None:
            raise missing("refund", re_id)
        return refund

    def list_refunds(self, params: Obj) -> Obj:
        _check_params(params, LIST_PARAMS | {"payment_intent", "charge"})
        items = [r for r in self.data["refunds"].values()
                 if all(not params.get(k) or r[k] == params[k] for k in ("payment_intent", "charge"))]
        return _page(items, params, "/v1/refunds")


def _page(items: list[Obj], params: Obj, url: str) -> Obj:
    """A Stripe list: newest first, `limit` (1..100, default 10), `starting_after` / `ending_before` cursors."""
    newest_first = list(reversed(items))
    limit = _int(params, "limit", minimum=1) or 10
    if limit > 100:
        raise invalid(f"This value must be less than or equal to 100 (it currently is '{limit}').",
                      code="parameter_invalid_integer", param="limit")
    ids = [o["id"] for o in newest_first]
    if params.get("starting_after"):
        cursor = str(params["starting_after"])
        if cursor not in ids:
            raise missing("object", cursor, param="starting_after")
        rest = newest_first[ids.index(cursor) + 1:]
        return {"object": "list", "url": url, "has_more": len(rest) > limit, "data": rest[:limit]}
    if params.get("ending_before"):
        cursor = str(params["ending_before"])
        if cursor not in ids:
            raise missing("object", cursor, param="ending_before")
        before = newest_first[:ids.index(cursor)]
        return {"object": "list", "url": url, "has_more": len(before) > limit, "data": before[-limit:]}
    return {"object": "list", "url": url, "has_more": len(newest_first) > limit, "data": newest_first[:limit]}


_CLAUSE = re.compile(r"""(-?)(metadata\[(['"])(.+?)\3\]|[a-z_]+)(:|~|>=|<=|>|<)(?:'([^']*)'|"([^"]*)"|(\S+))""")


def _compile_query(query: str) -> Any:
    """Stripe's search query language, the parts a PaymentIntent search needs: `field:value`,
    `metadata['key']:'value'`, `~` (substring), numeric comparisons, `-` negation, AND or OR (not mixed)."""
    parts = re.split(r"\s+(AND|OR)\s+", query.strip())
    clauses, joins = parts[::2], set(parts[1::2])
    if len(joins) > 1:
        raise invalid("Search queries cannot mix AND and OR.", code="parameter_invalid_string", param="query")
    tests = []
    for text in clauses:
        found = _CLAUSE.fullmatch(text.strip())
        if not found:
            raise invalid(f"Invalid search query: could not parse '{text}'.", code="parameter_invalid_string",
                          param="query")
        negate, field, _, meta_key, op, *values = found.groups()
        value = next(v for v in values if v is not None)
        tests.append((bool(negate), field, meta_key, op, value))

    def clause(obj: Obj, negate: bool, field: str, meta_key: str | None, op: str, value: str) -> bool:
        actual = obj["metadata"].get(meta_key) if meta_key else obj.get(field)
        if actual is None:
            result = False
        elif op == ":":
            result = str(actual) == value
        elif op == "~":
            result = value in str(actual)
        else:
            try:
                left, right = float(actual), float(value)
            except ValueError:
                return negate
            result = {">": left > right, "<": left < right, ">=": left >= right, "<=": left <= right}[op]
        return result != negate

    combine = any if joins == {"OR"} else all
    return lambda obj: combine(clause(obj, *t) for t in tests)
