"""S3 for tests and `make run`: moto in server mode (the real S3 HTTP API) with the product's bucket made.

The product reaches it only through boto3 with `endpoint_url=SAGA_S3_ENDPOINT_URL`. Objects live in this
process's memory: they are gone when it stops.

Run: python -m standins.s3_server --port P --bucket NAME
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from standins import DUMMY_CREDENTIALS


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
    server = ThreadedMotoServer(ip_address=args.host, port=args.port, verbose=False)
    server.start()
    endpoint = f"http://{args.host}:{args.port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=DUMMY_CREDENTIALS["AWS_DEFAULT_REGION"])
    s3.create_bucket(Bucket=args.bucket)
    print(f"s3 stand-in ready on {endpoint} with bucket {args.bucket}", flush=True)
    stop.wait()
    server.stop()


if __name__ == "__main__":
    main()
