"""S3 for tests and `make run`: moto in server mode (the real S3 HTTP API) with the product's bucket made.

The product reaches it only through boto3 with `endpoint_url=SAGA_S3_ENDPOINT_URL`. Objects live in this
process's memory: they are gone when it stops.

In front of moto sits a request log, so tests can count every PutObject the stand-in served (an upload made
twice under one key overwrites the object and looks like one in a listing): `GET /_control/requests` answers
`{"count": N, "requests": [...]}`, each request with its method, operation (PutObject, DeleteObject, ...),
bucket, key, status, `at` (when it arrived) and `done_at` (when moto had answered). Bucket names cannot
start with an underscore, so `/_control/` never reaches moto.

Run: python -m standins.s3_server --port P --bucket NAME
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import boto3
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

from standins import DUMMY_CREDENTIALS

Environ = dict[str, Any]
StartResponse = Callable[..., Any]


def operation(method: str, bucket: str | None, key: str | None, query: str, headers: Environ) -> str:
    """The S3 API operation a request is, as far as the tests need to tell them apart."""
    params = {part.split("=", 1)[0] for part in query.split("&") if part}
    if key:
        if method == "PUT":
            if "partNumber" in params:
                return "UploadPart"
            return "CopyObject" if "HTTP_X_AMZ_COPY_SOURCE" in headers else "PutObject"
        return {"GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(method, f"{method}Object")
    if bucket:
        if method == "POST" and "delete" in params:
            return "DeleteObjects"
        return {"GET": "ListObjects", "HEAD": "HeadBucket", "PUT": "CreateBucket",
                "DELETE": "DeleteBucket"}.get(method, f"{method}Bucket")
    return f"{method}Service"


class RequestLog:
    """WSGI middleware in front of moto: keeps one entry per S3 request served, and answers the control
    endpoint that lists them."""

    def __init__(self, app: Callable[[Environ, StartResponse], Iterable[bytes]]) -> None:
        self.app = app
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_control/"):
            return self.control(environ["REQUEST_METHOD"], path, start_response)
        bucket, key = self._target(environ, path)
        method, query = environ["REQUEST_METHOD"], environ.get("QUERY_STRING", "")
        entry: dict[str, Any] = {"method": method, "operation": operation(method, bucket, key, query, environ),
                                 "bucket": bucket, "key": key, "query": query, "at": time.time()}

        def recording(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            entry["status"] = int(status.split(" ", 1)[0])
            return start_response(status, headers, exc_info)

        try:
            return self.app(environ, recording)
        finally:
            entry["done_at"] = time.time()
            with self.lock:
                self.requests.append(entry)

    @staticmethod
    def _target(environ: Environ, path: str) -> tuple[str | None, str | None]:
        """Bucket and key of a path-style request (what boto3 sends to an IP address endpoint), or of a
        virtual-hosted one (`bucket.host`)."""
        host = environ.get("HTTP_HOST", "").split(":", 1)[0]
        parts = path.lstrip("/").split("/", 1)
        if host.count(".") and not host.replace(".", "").isdigit() and not host.startswith(("localhost", "s3.")):
            return host.split(".", 1)[0], path.lstrip("/") or None
        return parts[0] or None, (parts[1] if len(parts) == 2 and parts[1] else None)

    def control(self, method: str, path: str, start_response: StartResponse) -> Iterable[bytes]:
        if (method, path) == ("GET", "/_control/requests"):
            with self.lock:
                status, body = "200 OK", {"count": len(self.requests), "requests": list(self.requests)}
        else:
            status, body = "404 Not Found", {"error": {"message": f"no control endpoint {method} {path}"}}
        payload = json.dumps(body).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
        return [payload]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="moto S3 server with one bucket created")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--bucket", required=True)
    args = parser.parse_args(argv)
    for name, value in DUMMY_CREDENTIALS.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("MOTO_PORT", str(args.port))

    stop = threading.Event()

    def _stop(*_: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # What moto's ThreadedMotoServer does, with the request log in front of its application.
    server = make_server(args.host, args.port, RequestLog(DomainDispatcherApplication(create_backend_app)),
                         threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://{args.host}:{args.port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=DUMMY_CREDENTIALS["AWS_DEFAULT_REGION"])
    s3.create_bucket(Bucket=args.bucket)
    print(f"s3 stand-in ready on {endpoint} with bucket {args.bucket}", flush=True)
    stop.wait()
    server.shutdown()
    thread.join()


if __name__ == "__main__":
    main()
