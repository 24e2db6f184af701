"""`python -m service dev` (what `make run` runs): it stops within 3 seconds of SIGTERM, and nothing it started outlives it,
not even when it is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from saga.testing import Stack, wait_until
from standins import free_port
from tests.conftest import ROOT


@pytest.fixture()
def dev_stack(stack: Stack, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """`python -m service dev --no-demo` on this session's servers (so no embedded ones), in a directory of its own."""
    log = tmp_path / "dev.log"
    env = {**os.environ, "SAGA_DATABASE_URL": stack.database_url, "SAGA_BROKER_URL": stack.env["SAGA_BROKER_URL"],
           "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "dev", "--no-demo", "--workers", "1",
             f"--api-port={free_port()}", f"--flower-port={free_port()}"],
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
