"""The ledger owns its tables and only them: it migrates beside another application's Alembic history in the same
database, in either order, touching neither that history nor its next upgrade, and creating none of the service's
tables; a ledger made when it shared Alembic's default version table (migrations 0001-0010, with the service's
tables) upgrades in place with every saga, step and event kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, text

import migrations
from api.keys import EVERY_SCOPE
from devstack.servers import Services
from saga import store
from saga.ledger import TABLES, VERSION_TABLE
from saga.states import SagaStatus, StepStatus
from saga.testing import create_database, drop_database, with_database
from saga.testing.databases import libpq_url
from tests.conftest import ROOT

SHOP = ROOT / "examples" / "shop"
SHOP_FIRST, SHOP_NEXT = "a1b2c3d4e5f6", "c3d4e5f6a7b8"  # the shop's own revisions
LEDGER_HEAD = "0012"
SERVICE_TABLES = {"api_keys", "api_key_events", "job_postings", "service_alembic_version"}
BIN = Path(sys.executable).parent


@pytest.fixture()
def database(servers: Services) -> Iterator[str]:
    """An empty database of its own."""
    name = f"saga_schema_{uuid.uuid4().hex[:10]}"
    create_database(servers.database_url, name)
    try:
        yield with_database(servers.database_url, name)
    finally:
        drop_database(servers.database_url, name)


def run(url: str, *argv: str, cwd: Path = ROOT) -> str:
    """A command as a user types it, on database `url` (SAGA_DATABASE_URL); its output, or the test fails."""
    done = subprocess.run(argv, cwd=cwd, env={**os.environ, "SAGA_DATABASE_URL": url}, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{argv}: {done.stdout}{done.stderr}"
    return done.stdout + done.stderr


def shop_alembic(url: str, *args: str) -> str:
    return run(url, str(BIN / "alembic"), *args, cwd=SHOP)


def saga_migrate(url: str) -> str:
    return run(url, str(BIN / "saga"), "migrate")


def query(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(libpq_url(url)) as conn:
        return conn.execute(sql).fetchall()


def tables(url: str) -> set[str]:
    return {r[0] for r in query(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def version(url: str, table: str) -> list[str]:
    return [r[0] for r in query(url, f"SELECT version_num FROM {table} ORDER BY 1")]


def shop_tables_hold_their_rows(url: str) -> None:
    assert query(url, "SELECT sku, available FROM shop_stock") == [("A1", 100)]


@pytest.mark.parametrize("ledger_first", [False, True], ids=["shop-then-ledger", "ledger-then-shop"])
def test_the_ledger_migrates_beside_another_applications_alembic_history(database: str, ledger_first: bool) -> None:
    if ledger_first:
        saga_migrate(database)
        shop_alembic(database, "upgrade", SHOP_FIRST)
    else:
        shop_alembic(database, "upgrade", SHOP_FIRST)
        saga_migrate(database)
    assert version(database, "alembic_version") == [SHOP_FIRST], "the shop's history was touched"
    assert version(database, VERSION_TABLE) == [LEDGER_HEAD]
    assert tables(database) == {*TABLES, "alembic_version", "shop_stock", "shop_shipments"}, "not the ledger's alone"
    shop_tables_hold_their_rows(database)

    shop_alembic(database, "upgrade", "head")  # the shop's next upgrade, after the ledger's
    assert version(database, "alembic_version") == [SHOP_NEXT]
    assert query(database, "SELECT sku, available, reorder_at FROM shop_stock") == [("A1", 100, 10)]
    assert SHOP_NEXT in shop_alembic(database, "current")
    assert "ledger is up to date" in saga_migrate(database)  # and the ledger's again: nothing to do, nothing touched
    assert version(database, "alembic_version") == [SHOP_NEXT] and version(database, VERSION_TABLE) == [LEDGER_HEAD]
    assert not SERVICE_TABLES & tables(database)


# One saga in every status, each with two steps and two events, as the engine leaves them.
STEP_OF = {
    SagaStatus.PENDING: (StepStatus.PENDING, StepStatus.PENDING),
    SagaStatus.RUNNING: (StepStatus.SUCCEEDED, StepStatus.RUNNING),
    SagaStatus.AWAITING_INPUT: (StepStatus.SUCCEEDED, StepStatus.PENDING),
    SagaStatus.COMPENSATING: (StepStatus.COMPENSATING, StepStatus.FAILED),
    SagaStatus.COMPLETED: (StepStatus.SUCCEEDED, StepStatus.SUCCEEDED),
    SagaStatus.COMPENSATED: (StepStatus.COMPENSATED, StepStatus.FAILED),
    SagaStatus.PAUSED: (StepStatus.SUCCEEDED, StepStatus.FAILED),
    SagaStatus.FAILED: (StepStatus.FAILED, StepStatus.FAILED),
}
SNAPSHOT = {  # every row of every table the upgrade must keep, in a stable order
    "sagas": "id", "saga_steps": "saga_id, idx", "saga_events": "id", "api_keys": "id", "job_postings": "id",
}


def fill(url: str) -> dict[str, str]:
    """The sagas above, an API key and a posting, written as migrations 0001-0010 shaped them."""
    ids = {status: str(uuid.uuid4()) for status in STEP_OF}
    with psycopg.connect(libpq_url(url)) as conn:
        for status, saga_id in ids.items():
            awaiting = {"step": "b", "fields": ["card"], "reason": "declined", "until": "2030-01-01T00:00:00+00:00"}
            conn.execute(
                "INSERT INTO sagas (id, tenant, type, status, input, large_input, idempotency_key, request_hash, error,"
                " deadline, awaiting, version, fingerprint) VALUES (%s, 'acme', 'order', %s, %s, %s, %s, 'h', %s,"
                " now(), %s, 1, 'fp')",
                (saga_id, status.value, json.dumps({"sku": "A1", "n": status.value}), json.dumps({"logo": "x" * 50}),
                 f"key-{status.value}", None if status == SagaStatus.COMPLETED else f"why {status.value}",
                 json.dumps(awaiting) if status == SagaStatus.AWAITING_INPUT else None))
            for idx, (name, step_status) in enumerate(zip(("a", "b"), STEP_OF[status], strict=True)):
                conn.execute(
                    "INSERT INTO saga_steps (saga_id, idx, name, kind, status, attempts, fencing_token, result, "
                    "checkpoint, generation) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 0)",
                    (saga_id, idx, name, ("compensable", "pivot")[idx], step_status.value, idx + 1, idx + 3,
                     json.dumps({"done": name}), json.dumps({"intent": f"pi_{idx}"})))
            for kind in ("saga_accepted", f"saga_{status.value}"):
                conn.execute("INSERT INTO saga_events (saga_id, step, kind, detail) VALUES (%s, 'a', %s, %s)",
                             (saga_id, kind, json.dumps({"status": status.value})))
        conn.execute("INSERT INTO api_keys (tenant, name, key_hash) VALUES ('acme', 'ci', 'deadbeef')")
        conn.execute("INSERT INTO job_postings (id, saga_id, company, title, description, contact_email, logo_key) "
                     "VALUES (%s, %s, 'Initech', 'Engineer', 'd', 'a@b.c', 'logos/x.png')",
                     (str(uuid.uuid4()), ids[SagaStatus.COMPLETED]))
    return {status.value: saga_id for status, saga_id in ids.items()}


def snapshot(url: str) -> dict[str, list[str]]:
    return {table: [r[0] for r in query(url, f"SELECT to_jsonb(t)::text FROM {table} t ORDER BY {order}")]
            for table, order in SNAPSHOT.items()}


def admitted_dropped(upgraded: dict[str, list[str]]) -> dict[str, list[str]]:
    """The snapshot without `sagas.admitted` (0012), checked first: every saga from before tenant limits counts
    as admitted."""
    rows = [json.loads(row) for row in upgraded["sagas"]]
    assert [row.pop("admitted") for row in rows] == [True] * len(rows)
    return {**upgraded, "sagas": [json.dumps(row) for row in rows]}


def ledger_schema(url: str) -> dict[str, list[tuple]]:
    """The ledger's tables as PostgreSQL describes them: columns, constraints, indexes and triggers."""
    names = "('sagas', 'saga_steps', 'saga_events', 'saga_seal_key')"
    return {
        "columns": query(url, "SELECT table_name, column_name, data_type, column_default, is_nullable FROM "
                              f"information_schema.columns WHERE table_name IN {names} ORDER BY 1, 2"),
        "constraints": query(url, "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM "
                                  f"pg_constraint WHERE conrelid::regclass::text IN {names} ORDER BY 1, 2"),
        "indexes": query(url, f"SELECT tablename, indexdef FROM pg_indexes WHERE tablename IN {names} ORDER BY 1, 2"),
        "triggers": query(url, "SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE NOT tgisinternal "
                               "ORDER BY 1, 2"),
    }


def seal_keys(url: str) -> list[tuple]:
    """The sealing key's row: its id and the key's length (never the key)."""
    return query(url, "SELECT id, length(key) FROM saga_seal_key")


def test_a_ledger_from_the_shared_version_table_upgrades_in_place_keeping_every_saga(
        database: str, servers: Services) -> None:
    with psycopg.connect(libpq_url(database)) as conn:
        conn.execute((Path(__file__).parent / "data" / "ledger-0010.sql").read_text())
    ids = fill(database)
    before = snapshot(database)
    assert [len(before[t]) for t in SNAPSHOT] == [8, 16, 16, 1, 1]

    saga_migrate(database)
    assert version(database, VERSION_TABLE) == [LEDGER_HEAD]
    assert "alembic_version" not in tables(database), "the shared version table held only the ledger's row"
    assert admitted_dropped(snapshot(database)) == before, "a saga, step, event or service row changed"

    migrations.upgrade(database)  # the service's own history adopts its tables as they are
    assert version(database, "service_alembic_version") == ["api_0004", "jobs_0001"]
    after = admitted_dropped(snapshot(database))
    keys = [json.loads(row) for row in after.pop("api_keys")]
    assert [key.pop("scopes") for key in keys] == [list(EVERY_SCOPE)], "a key from before scopes keeps every one"
    assert {**after, "api_keys": keys} == {**before, "api_keys": [json.loads(row) for row in before["api_keys"]]}

    fresh = with_database(servers.database_url, f"saga_schema_{uuid.uuid4().hex[:10]}")
    create_database(servers.database_url, fresh.rsplit("/", 1)[1])
    try:
        saga_migrate(fresh)
        migrations.upgrade(fresh)  # the service's too: its webhook outbox is a trigger on the ledger's events
        assert ledger_schema(database) == ledger_schema(fresh), "the upgraded ledger differs from a new one"
        # Each ledger has a sealing key of its own, 32 random bytes made when it was migrated.
        assert seal_keys(database) == seal_keys(fresh) == [(1, 32)]
        assert query(database, "SELECT key FROM saga_seal_key") != query(fresh, "SELECT key FROM saga_seal_key")
    finally:
        drop_database(servers.database_url, fresh.rsplit("/", 1)[1])

    engine = create_engine(database)  # the engine reads every saga of the upgraded ledger
    try:
        with engine.connect() as conn:
            for status, saga_id in ids.items():
                record = store.load(uuid.UUID(saga_id), conn=conn)
                assert (record.status, [s.name for s in record.steps]) == (status, ["a", "b"])
            assert conn.execute(text("SELECT count(*) FROM saga_events")).scalar() == 16
    finally:
        engine.dispose()
