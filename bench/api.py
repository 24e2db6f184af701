"""`POST /v1/sagas` latency and throughput with one API process, while the workers are busy with sagas."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import httpx

from saga.testing import Stack

API_PORT = 8765
BENCH_KEY = "bench-key-0123456789abcdef"


def measure(stack: Stack, requests: int, clients: int, background: Any) -> dict[str, Any]:
    """Start one API process; `background()` keeps workers busy; returns latency and requests/s figures."""
    from devstack.api_process import spawn

    env = {"SAGA_API_KEYS": f"bench:{BENCH_KEY}"}
    stack.env.update(env)
    api = spawn("bench-api", stack.env, stack.data_dir, port=API_PORT, extra=("--no-access-log",))
    stack.processes.append(api)
    url = f"http://127.0.0.1:{API_PORT}/v1/sagas"
    headers = {"Authorization": f"Bearer {BENCH_KEY}"}
    body = {"type": "bench_saga", "input": {"run_id": f"api-{uuid.uuid4().hex[:8]}"}}
    with httpx.Client(headers=headers, timeout=30) as client:
        for _ in range(20):  # warm-up: connections, prepared statements
            client.post(url, json=body, headers={"Idempotency-Key": str(uuid.uuid4())}).raise_for_status()
        background()
        latencies = []
        for _ in range(requests):
            t0 = time.perf_counter()
            client.post(url, json=body, headers={"Idempotency-Key": str(uuid.uuid4())}).raise_for_status()
            latencies.append((time.perf_counter() - t0) * 1000)

    background()
    done = [0]
    lock = threading.Lock()

    def hammer() -> None:
        with httpx.Client(headers=headers, timeout=30) as client:
            for _ in range(requests // clients):
                client.post(url, json=body, headers={"Idempotency-Key": str(uuid.uuid4())}).raise_for_status()
                with lock:
                    done[0] += 1

    threads = [threading.Thread(target=hammer) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    return {"latencies_ms": latencies, "requests_per_s": done[0] / elapsed, "clients": clients}
