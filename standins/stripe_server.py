"""A Stripe-compatible HTTP server standing in for api.stripe.com in tests and `make run`.

The product reaches it only through the `stripe` SDK pointed at `STRIPE_API_BASE`. It speaks Stripe's wire
protocol (form-encoded parameters, Bearer `sk_test_...` keys, `Idempotency-Key`, Stripe's error shape) and
has switches under `/_control/` (outside `/v1`, so the SDK never reaches them) for tests to inject faults:

    POST /_control/faults  {"mode": "400"|"429"|"500"|"hang"|"lost", "count": N, "seconds": S, "operation": OP,
                            "code": C, "add": true|false, "for_seconds": D}
    POST /_control/expire_keys   POST /_control/reset   GET /_control/state   GET /_control/requests

A fault applies to the next N `/v1` requests, or with `operation` to the next N of that kind only (create,
confirm, retrieve, cancel, refund, ...: see ROUTES), or with `for_seconds` to every such request for D seconds (an
outage; N is then ignored); a new fault replaces the ones set before unless `add`
is true. `400` (with error code C), `429` and `500` answer that error without doing anything; like Stripe,
an idempotency key keeps a 500 or a 400 (they come up while executing) and replays it, but not a 429. `hang` holds the request S seconds and then does it, as Stripe does with a request that is slow on
its side: a client that gave up meanwhile never hears that its request went through. While it hangs, its
idempotency key is in use (a retry with it gets Stripe's 409) and the object it acts on is locked (another
write to that PaymentIntent gets Stripe's 429 `lock_timeout`). `lost` does the work at once and then holds
the answer S seconds: the client times out not knowing what happened. `expire_keys` forgets every stored
idempotency key, as Stripe does 24 hours after a key's first use.

Run: python -m standins.stripe_server --port P [--state FILE]
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import parse_qsl, urlsplit

from standins.stripe_model import Obj, Store, StripeError, decode_params, invalid, new_id

Route = Callable[[Store, "re.Match[str]", Obj], Obj]

ROUTES: list[tuple[str, str, str, Route]] = [
    ("POST", r"/v1/payment_intents", "create", lambda s, m, p: s.create_payment_intent(p)),
    ("GET", r"/v1/payment_intents", "list", lambda s, m, p: s.list_payment_intents(p)),
    ("GET", r"/v1/payment_intents/search", "search", lambda s, m, p: s.search_payment_intents(p)),
    ("GET", r"/v1/payment_intents/([^/]+)", "retrieve", lambda s, m, p: s.retrieve_payment_intent(m[1])),
    ("POST", r"/v1/payment_intents/([^/]+)", "update", lambda s, m, p: s.update_payment_intent(m[1], p)),
    ("POST", r"/v1/payment_intents/([^/]+)/confirm", "confirm", lambda s, m, p: s.confirm_payment_intent(m[1], p)),
    ("POST", r"/v1/payment_intents/([^/]+)/cancel", "cancel", lambda s, m, p: s.cancel_payment_intent(m[1], p)),
    ("POST", r"/v1/refunds", "refund", lambda s, m, p: s.create_refund(p)),
    ("GET", r"/v1/refunds", "list_refunds", lambda s, m, p: s.list_refunds(p)),
    ("GET", r"/v1/refunds/([^/]+)", "retrieve_refund", lambda s, m, p: s.retrieve_refund(m[1])),
    ("GET", r"/v1/charges/([^/]+)", "retrieve_charge", lambda s, m, p: s.retrieve_charge(m[1])),
]
OPERATIONS = tuple(route[2] for route in ROUTES)
FAULT_MODES = ("400", "429", "500", "hang", "lost")
LOCK_TIMEOUT = ("This object cannot be accessed right now because another API request or Stripe process is "
                "currently accessing it. If you see this error intermittently, retry the request.")


@dataclass
class Reply:
    """An HTTP answer; `hold` is how long to sit on it before sending (the `hang` fault)."""

    status: int
    body: Obj
    headers: dict[str, str] = field(default_factory=dict)
    hold: float = 0.0


@dataclass
class Fault:
    """The next `count` /v1 requests (of `operation` only, if set) misbehave as `mode` says, for `seconds`
    where that applies."""

    mode: str
    count: int
    seconds: float = 0.0
    operation: str | None = None
    code: str = "invalid_request"  # the error code a "400" answers with
    until: float | None = None  # an outage: every fitting request until this time (time.time()), whatever `count`


@dataclass(frozen=True)
class Request:
    """One /v1 request, routed."""

    method: str
    path: str
    operation: str | None
    action: Route | None
    match: re.Match[str] | None


def route(method: str, path: str) -> Request:
    for route_method, pattern, operation, action in ROUTES:
        match = re.fullmatch(pattern, path)
        if match and route_method == method:
            return Request(method, path, operation, action, match)
    return Request(method, path, None, None, None)


def error_reply(err: StripeError) -> Reply:
    return Reply(err.status, err.body())


class StripeApp:
    """The API behind the HTTP handler: authentication, idempotency keys, object locks, faults and the
    request log."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.faults: list[Fault] = []  # each takes the requests of its operation; the first that fits wins
        self.in_progress: set[str] = set()
        self.locked: set[str] = set()  # ids of objects a hanging request is working on
        self.requests: list[Obj] = []

    def handle(self, method: str, target: str, body: bytes, headers: dict[str, str]) -> Reply:
        url = urlsplit(target)
        if url.path.startswith("/_control/"):
            return self.control(method, url.path, body)
        request = route(method, url.path)
        key = headers.get("idempotency-key")
        entry: Obj = {"method": method, "path": url.path, "operation": request.operation, "idempotency_key": key,
                      "at": time.time()}
        with self.store.lock:
            fault = self._take_fault(request.operation)
            entry["fault"] = fault and fault.mode
            self.requests.append(entry)
        request_id = new_id("req_")
        try:
            reply = self._answer(request, url.query, body, headers, key, fault)
        except Exception:  # noqa: BLE001 - any bug must still answer as Stripe does: a 500
            traceback.print_exc()
            reply = error_reply(StripeError(500, "api_error", "An unknown error occurred"))
        reply.headers |= {"Request-Id": reply.headers.get("Request-Id", request_id)}
        if key:
            reply.headers["Idempotency-Key"] = key
        if headers.get("stripe-version"):
            reply.headers["Stripe-Version"] = headers["stripe-version"]
        entry["status"], entry["replayed"] = reply.status, "Idempotent-Replayed" in reply.headers
        entry["done_at"] = time.time()
        if fault and fault.mode == "lost":
            reply.hold = fault.seconds
        return reply

    def _take_fault(self, operation: str | None) -> Fault | None:
        self.faults = [f for f in self.faults if f.until is None or f.until > time.time()]
        fault = next((f for f in self.faults if f.operation in (None, operation)), None)
        if fault is None:
            return None
        if fault.until is not None:
            return Fault(fault.mode, 1, fault.seconds, fault.operation, fault.code)
        fault.count -= 1
        if fault.count <= 0:
            self.faults.remove(fault)
        return Fault(fault.mode, 1, fault.seconds, fault.operation, fault.code)

    def _answer(self, request: Request, query: str, body: bytes, headers: dict[str, str],
                key: str | None, fault: Fault | None) -> Reply:
        if fault and fault.mode == "429":  # the rate limiter answers before the idempotency layer: nothing is kept
            return error_reply(invalid("Too many requests hit the API too quickly. We recommend an exponential "
                                       "backoff of your requests.", code="rate_limit", status=429))
        denied = self._authenticate(headers.get("authorization", ""))
        if denied:
            return error_reply(denied)
        pairs = parse_qsl(query, keep_blank_values=True)
        if request.method == "POST":
            pairs += parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        params = decode_params(pairs)
        if request.method != "POST" or not key:
            return self._execute(request, params, fault)[0]
        return self._idempotent(request, params, key, fault)

    def _execute(self, request: Request, params: Obj, fault: Fault | None) -> tuple[Reply, bool]:
        """The request's answer once it began executing, and whether an idempotency key keeps it: a 500 or a
        400 that came up while executing is kept like any other answer, as Stripe keeps it."""
        if fault and fault.mode == "500":
            reply = error_reply(StripeError(500, "api_error", "An unknown error occurred (injected fault)."))
            reply.headers["Stripe-Should-Retry"] = "false"  # what Stripe says of a 500 it keeps for the key
            return reply, True
        if fault and fault.mode == "400":
            return error_reply(invalid(f"Your request was refused ({fault.code}; injected fault).",
                                       code=fault.code)), True
        return self._locked(request, params, fault.seconds if fault and fault.mode == "hang" else 0.0)

    def _idempotent(self, request: Request, params: Obj, key: str, fault: Fault | None) -> Reply:
        fingerprint = json.dumps([request.method, request.path, params], sort_keys=True)
        with self.store.lock:
            saved = self.store.data["idempotency"].get(key)
            if saved and saved["fingerprint"] != fingerprint:
                return error_reply(StripeError(
                    400, "idempotency_error", "Keys for idempotent requests can only be used with the same "
                    f"parameters they were first used with. Try using a key other than '{key}' if you meant "
                    "to execute a different request."))
            if saved:
                return Reply(saved["status"], saved["body"], {"Idempotent-Replayed": "true",
                                                              "Original-Request": saved["request_id"],
                                                              "Request-Id": saved["request_id"],
                                                              **saved.get("headers", {})})
            if key in self.in_progress:
                return error_reply(StripeError(
                    409, "idempotency_error", "There is currently another in-progress request using this "
                    f"idempotency key (that probably means you submitted twice, and the other request is "
                    f"still going through): {key}. Please try again later."))
            self.in_progress.add(key)
        try:
            reply, stored = self._execute(request, params, fault)
            if stored:
                request_id = new_id("req_")
                reply.headers["Request-Id"] = request_id
                with self.store.lock:
                    self.store.data["idempotency"][key] = {
                        "fingerprint": fingerprint, "status": reply.status, "body": reply.body,
                        "request_id": request_id, "created": int(time.time()),
                        "headers": {k: v for k, v in reply.headers.items() if k == "Stripe-Should-Retry"}}
                    self.store.save()
            return reply
        finally:
            with self.store.lock:
                self.in_progress.discard(key)

    def _locked(self, request: Request, params: Obj, hang: float) -> tuple[Reply, bool]:
        """Run the request while holding the object it writes to: a hanging request holds it all along, and
        another write to it meanwhile gets the `lock_timeout` Stripe answers."""
        target = _target(request, params)
        if target is not None:
            with self.store.lock:
                if target in self.locked:
                    return error_reply(invalid(LOCK_TIMEOUT, code="lock_timeout", status=429)), False
                self.locked.add(target)
        try:
            if hang:
                time.sleep(hang)
            return self._run(request, params)
        finally:
            if target is not None:
                with self.store.lock:
                    self.locked.discard(target)

    def _run(self, request: Request, params: Obj) -> tuple[Reply, bool]:
        """Do what the request asks; returns the reply and whether an idempotency key may keep it."""
        if request.action is None:
            return error_reply(invalid(f"Unrecognized request URL ({request.method}: {request.path}). Please see "
                                       "https://stripe.com/docs or we can help at https://support.stripe.com/.",
                                       status=404)), False
        with self.store.lock:
            try:
                # A JSON round trip snapshots the objects: later changes must not alter a stored reply.
                result = json.loads(json.dumps(request.action(self.store, request.match, params)))  # type: ignore[arg-type]
                return Reply(200, result), True
            except StripeError as err:
                return Reply(err.status, json.loads(json.dumps(err.body()))), err.stored
            finally:
                if request.method == "POST":
                    self.store.save()

    @staticmethod
    def _authenticate(header: str) -> StripeError | None:
        scheme, _, credential = header.partition(" ")
        if scheme.lower() == "basic":
            credential = base64.b64decode(credential + "==").decode("utf-8", "replace").partition(":")[0]
        elif scheme.lower() != "bearer":
            credential = ""
        if not credential:
            return invalid("You did not provide an API key. You need to provide your API key in the "
                           "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                           "YOUR_SECRET_KEY').", status=401)
        if not re.fullmatch(r"(sk|rk)_test_\w+", credential):
            return invalid(f"Invalid API Key provided: {credential[:8]}****{credential[-4:]}", status=401,
                           code="api_key_invalid")
        return None

    def control(self, method: str, path: str, body: bytes) -> Reply:
        """The test switches: faults, reset, and views of the records and of the requests received."""
        with self.store.lock:
            if (method, path) == ("POST", "/_control/faults"):
                spec = json.loads(body or b"{}")
                if (spec.get("mode") not in FAULT_MODES or int(spec.get("count", 1)) < 0
                        or spec.get("operation") not in (None, *OPERATIONS)):
                    return Reply(400, {"error": {"message": f"mode must be one of {FAULT_MODES}, count >= 0, "
                                                            f"operation one of {OPERATIONS} or absent"}})
                count = int(spec.get("count", 1))
                until = time.time() + float(spec["for_seconds"]) if spec.get("for_seconds") else None
                if not spec.get("add"):
                    self.faults = []
                if count or until:
                    self.faults.append(Fault(spec["mode"], count, float(spec.get("seconds", 0)), spec.get("operation"),
                                             str(spec.get("code") or "invalid_request"), until))
                return Reply(200, {"faults": [asdict(f) for f in self.faults]})
            if (method, path) == ("POST", "/_control/expire_keys"):
                return Reply(200, {"expired": self.store.clear("idempotency")})
            if (method, path) == ("POST", "/_control/reset"):
                self.store.reset()
                self.faults, self.requests = [], []
                return Reply(200, {"reset": True})
            if (method, path) == ("GET", "/_control/state"):
                data = self.store.data
                return Reply(200, {
                    "payment_intents": list(data["payment_intents"].values()),
                    "refunds": list(data["refunds"].values()), "charges": list(data["charges"].values()),
                    "idempotency_keys": list(data["idempotency"]), "faults": [asdict(f) for f in self.faults]})
            if (method, path) == ("GET", "/_control/requests"):
                return Reply(200, {"count": len(self.requests), "requests": self.requests})
        return Reply(404, {"error": {"message": f"no control endpoint {method} {path}"}})


def _target(request: Request, params: Obj) -> str | None:
    """The PaymentIntent a write acts on, if any."""
    if request.method != "POST" or request.match is None:
        return None
    if request.operation in ("update", "confirm", "cancel"):
        return request.match[1]
    if request.operation == "refund" and params.get("payment_intent"):
        return str(params["payment_intent"])
    return None


class Handler(BaseHTTPRequestHandler):
    """Hands each request to the server's `StripeApp`, one thread per connection."""

    protocol_version = "HTTP/1.1"
    server: StripeHTTPServer

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = self.server.app.handle(method, self.path, body, headers)
        if reply.hold:
            time.sleep(reply.hold)
        payload = json.dumps(reply.body, indent=2).encode()
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up waiting (the `hang` fault)


class StripeHTTPServer(ThreadingHTTPServer):
    """A threaded HTTP server carrying the app, so a held request never blocks the others."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: StripeApp) -> None:
        super().__init__(address, Handler)
        self.app = app


def _exit(*_: Any) -> NoReturn:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--state", type=Path, help="journal (JSON lines) keeping the records across restarts")
    args = parser.parse_args(argv)
    server = StripeHTTPServer((args.host, args.port), StripeApp(Store(args.state)))
    signal.signal(signal.SIGTERM, _exit)
    print(f"stripe stand-in ready on http://{args.host}:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        sys.stdout.flush()


if __name__ == "__main__":
    main()
