"""`make run`, exactly as a newcomer runs it (on this machine's PostgreSQL and Redis: a database and a Redis DB of
its own), demo included: three postings reach their three outcomes, the evidence it prints matches what the
stand-ins, the database and the ledger hold, and SIGTERM to `make` leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg
import pytest
import redis

from devstack import flower
from devstack.servers import Services
from saga.testing import (
    claim_redis_db,
    create_database,
    drop_database,
    wait_until,
    with_database,
    with_redis_db,
)
from saga.testing.databases import libpq_url
from standins import StandIns, free_port
from tests.conftest import ROOT
from tests.test_dev_stack import still_running

BANNER = re.compile(r"stand-ins +S3 (?P<s3>\S+) \(bucket (?P<bucket>[^)]+)\), Stripe (?P<stripe>\S+), "
                    r"SMTP (?P<host>[\d.]+):(?P<port>\d+) \(mail in (?P<maildir>[^)]+)\)")
EVIDENCE = re.compile(r"^  (?P<company>\w+) +(?P<status>\w+) +logo (?P<logo>.*?); posting (?P<posting>.*?); "
                      r"stripe (?P<stripe>.*?); receipt (?P<receipt>.*)$", re.MULTILINE)


@dataclass
class Run:
    process: subprocess.Popen[bytes]
    log: Path
    database_url: str
    started: float

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def make_run(servers: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    data = tmp_path_factory.mktemp("make-run")
    name = f"saga_run_{uuid.uuid4().hex[:10]}"
    create_database(servers.database_url, name)
    broker = with_redis_db(servers.broker_url, claim_redis_db(servers.broker_url))
    database_url = with_database(servers.database_url, name)
    # A newcomer's shell: none of this session's settings, only where the servers are.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGA_", "STRIPE_", "CELERY_", "AWS_", "PYTEST"))}
    env |= {"SAGA_DATABASE_URL": database_url, "SAGA_BROKER_URL": broker}
    log = data / "make-run.log"
    run_args = f"RUN_ARGS=--data-dir {data / 'saga'} --api-port {free_port()} --flower-port {free_port()}"
    with log.open("wb") as out:
        process = subprocess.Popen(["make", "-s", "run", run_args], cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    run = Run(process, log, database_url, time.monotonic())
    try:
        yield run
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        drop_database(servers.database_url, name)
        redis.Redis.from_url(broker).flushdb()


def running(run: Run) -> str:
    out = wait_until(lambda: run.process.poll() is not None or "Running." in run.output(), timeout=240,
                     what="make run to play its demo and print the Running. banner")
    assert run.process.poll() is None, run.output()[-5000:]
    return run.output() if out else ""


def test_make_run_shows_three_outcomes_and_evidence_that_the_third_parties_confirm(make_run: Run) -> None:
    out = running(make_run)
    print(f"make run: demo played and Running. printed {time.monotonic() - make_run.started:.0f} s after start")
    assert "Globex's client sends another card." in out and "Umbrella's client cancels." in out
    for company in ("Globex", "Umbrella"):
        assert re.search(rf"^{company}: saga \S+  type=job_posting  status=awaiting_input", out, re.MULTILINE), company

    printed = {m["company"]: m.groupdict() for m in EVIDENCE.finditer(out.split("hold now:", 1)[1])}
    assert set(printed) == {"Initech", "Globex", "Umbrella"}, out[-3000:]
    where = BANNER.search(out)
    assert where, out[-3000:]
    standins = StandIns(Path(), where["stripe"], where["s3"], where["host"], int(where["port"]),
                        Path(where["maildir"]), where["bucket"])
    keys, intents, mails = standins.s3_keys(), standins.payment_intents(), standins.messages()
    with psycopg.connect(libpq_url(make_run.database_url)) as conn:
        sagas = dict(conn.execute("SELECT input->>'company', id::text FROM sagas").fetchall())
        postings = dict(conn.execute("SELECT saga_id::text, status FROM job_postings").fetchall())
        statuses = dict(conn.execute("SELECT id::text, status FROM sagas").fetchall())
        kinds = dict(conn.execute("SELECT saga_id::text, array_agg(kind ORDER BY id) FROM saga_events "
                                  "GROUP BY saga_id").fetchall())
        errors = dict(conn.execute("SELECT id::text, error FROM sagas").fetchall())
    assert set(sagas) == set(printed)
    held = {}
    for company, sid in sagas.items():
        logos = [k for k in keys if sid in k]
        charges = [f"{pi['id']} {pi['status']}" for pi in intents if pi.get("metadata", {}).get("saga_id") == sid]
        receipts = [m["Message-ID"].strip() for m in mails if sid in (m["Message-ID"] or "")]  # every delivery
        held[company] = {"company": company, "status": statuses[sid], "logo": ", ".join(logos) or "none",
                         "posting": postings.get(sid) or "none", "stripe": ", ".join(charges) or "none",
                         "receipt": ", ".join(receipts) or "none"}
        assert printed[company] == held[company], f"printed {printed[company]}, the records say {held[company]}"

    ok = re.compile(r"pi_\w+ succeeded")
    for company in ("Initech", "Globex"):  # one logo, a live posting, ONE PaymentIntent charged, one receipt
        facts = held[company]
        assert facts["status"] == "completed" and facts["logo"] == f"logos/{sagas[company]}.png"
        assert facts["posting"] == "live" and ok.fullmatch(facts["stripe"]) and facts["receipt"].count("<") == 1
    assert {"input_requested", "input_received"} <= set(kinds[sagas["Globex"]])
    umbrella = held["Umbrella"]
    assert umbrella["status"] == "compensated" and umbrella["logo"] == umbrella["posting"] == "none"
    assert re.fullmatch(r"pi_\w+ canceled", umbrella["stripe"]) and umbrella["receipt"] == "none"
    assert "cancelled" in (errors[sagas["Umbrella"]] or ""), errors[sagas["Umbrella"]]
    # What lets someone act on the stack is for this user's eyes alone: the dev key, the env file holding it, and
    # Flower's password.
    for private in ("api-key", "env", flower.PASSWORD_FILE):
        assert (make_run.log.parent / "saga" / private).stat().st_mode & 0o777 == 0o600, private


def test_sigterm_to_make_leaves_no_process_behind(make_run: Run) -> None:
    running(make_run)
    started = psutil.Process(make_run.process.pid).children(recursive=True)
    assert len(started) >= 8, [" ".join(p.cmdline()[:4]) for p in started]  # python, 2 workers + pools, beat, ...
    make_run.process.send_signal(signal.SIGTERM)
    make_run.process.wait(timeout=30)

    wait_until(lambda: not still_running(started), timeout=20,
               what=f"every process make run started to stop: {still_running(started)}")
    assert "Stopped." in make_run.output()
