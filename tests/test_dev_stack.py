"""`python -m service dev` (what `make run` runs): it stops within 3 seconds of SIGTERM, and nothing it started outlives it,
not even when it is SIGKILLed; its Flower listens on 127.0.0.1 alone and wants the password it made."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from devstack import flower
from saga.testing import Stack, wait_until
from standins import free_port
from tests.conftest import ROOT


@pytest.fixture()
def dev_stack(stack: Stack, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """`python -m service dev --no-demo` on this session's servers (so no embedded ones), in a directory of its own."""
    log = tmp_path / "dev.log"
    api_port = free_port()
    while (flower_port := free_port()) == api_port:  # two picks in a row may name the same free port
        pass
    env = {**os.environ, "SAGA_DATABASE_URL": stack.database_url, "SAGA_BROKER_URL": stack.env["SAGA_BROKER_URL"],
           "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "dev", "--no-demo", "--workers", "1",
             f"--api-port={api_port}", f"--flower-port={flower_port}"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: process.poll() is not None or "Running." in log.read_text(errors="replace"),
                   timeout=120, what="service dev to be running")
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        yield process, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def started_by(pid: int) -> list[psutil.Process]:
    """Every process `python -m service dev` started (workers and their pools, beat, API, Flower, stand-ins)."""
    return psutil.Process(pid).children(recursive=True)


def still_running(processes: list[psutil.Process]) -> list[str]:
    alive = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(" ".join(p.cmdline()[:6]))
        except psutil.NoSuchProcess:
            pass
    return alive


def test_sigterm_stops_everything_within_three_seconds(dev_stack: tuple[subprocess.Popen[bytes], Path]) -> None:
    process, log = dev_stack
    children = started_by(process.pid)
    assert len(children) >= 6, [c.cmdline()[:4] for c in children]  # worker + pool, beat, API, Flower, stand-ins
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=10)
    took = time.monotonic() - started
    print(f"service dev stopped {len(children)} processes in {took:.2f} s")
    assert took < 3.0, f"took {took:.1f} s to stop"
    assert "Stopped." in log.read_text()
    assert still_running(children) == []


def test_sigkill_leaves_nothing_it_started(dev_stack: tuple[subprocess.Popen[bytes], Path]) -> None:
    process, _ = dev_stack
    children = started_by(process.pid)
    process.kill()
    process.wait()
    wait_until(lambda: not still_running(children), timeout=10,
               what=f"every process service dev started to die with it: {still_running(children)}")


def test_flower_listens_on_loopback_and_wants_its_password(dev_stack: tuple[subprocess.Popen[bytes], Path],
                                                          stack: Stack, tmp_path: Path) -> None:
    """Whoever reaches Flower can send any task, so it is never open: no API call without the password, no task
    from another site's page, even in a browser that holds the password."""
    process, log = dev_stack
    kept = tmp_path / ".saga" / flower.PASSWORD_FILE
    assert kept.stat().st_mode & 0o777 == 0o600
    password = kept.read_text().strip()
    banner = log.read_text()
    assert password not in banner and f"user {flower.USER}, the password is in .saga/{flower.PASSWORD_FILE}" in banner
    found = re.search(r"^  flower +(http://127\.0\.0\.1:\d+)", banner, re.MULTILINE)
    assert found, banner[-3000:]
    url, auth = found[1], (flower.USER, password)

    def answers() -> bool:
        try:
            return httpx.get(f"{url}/api/workers", auth=auth, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(answers, timeout=60, what="Flower to answer with its password")
    assert httpx.get(f"{url}/api/workers", timeout=10).status_code == 401
    assert httpx.get(f"{url}/api/workers", auth=(flower.USER, "guessed"), timeout=10).status_code == 401
    flowers = [p for p in started_by(process.pid) if "flower" in p.cmdline()]
    assert {c.laddr.ip for p in flowers for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN} \
        == {"127.0.0.1"}

    broker = redis.Redis.from_url(stack.env["SAGA_BROKER_URL"])
    queue = f"flower-test-{os.getpid()}"  # no worker reads it: what lands there stays there
    send = f"{url}/api/task/send-task/saga.recover"
    body = {"args": [], "queue": queue}
    other_site = {"Origin": "http://attacker.example", "Sec-Fetch-Site": "cross-site"}
    try:
        refused = httpx.post(send, json=body, headers=other_site, timeout=10)
        assert refused.status_code in (401, 403), refused.text
        held = httpx.post(send, json=body, headers=other_site, auth=auth, timeout=10)  # a browser holding it
        assert held.status_code == 403, held.text
        assert broker.llen(queue) == 0, "a request from another site queued a task"
        own = httpx.post(send, json=body, auth=auth, timeout=10)  # the same request from Flower's own page
        assert own.status_code == 200 and broker.llen(queue) == 1, own.text
    finally:
        broker.delete(queue)
