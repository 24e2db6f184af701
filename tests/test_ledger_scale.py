"""A ledger of 200,000 finished sagas: recovery's pass, the listing's first page and retention's batch each
use their index (checked on the plan), and their timings before and after the ledger grew are printed."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import text

from api import keys as apikeys
from saga import db, recovery, retention

SAGAS = 200_000


def grow(tenant: str, count: int, batch: str) -> None:
    """`count` sagas of `tenant` that ended 60 days ago, with four steps and two events each."""
    with db.transaction() as conn:
        conn.execute(text("""
            INSERT INTO sagas (id, tenant, type, status, input, idempotency_key, created_at, updated_at)
            SELECT gen_random_uuid(), :tenant, 'probe', (ARRAY['completed', 'compensated'])[1 + i % 2],
                   '{"customer": "ann", "amount_cents": 1200}', :batch || '-' || i,
                   now() - interval '60 days' + i * interval '1 ms', now() - interval '60 days' + i * interval '1 ms'
            FROM generate_series(1, :count) AS i"""), {"tenant": tenant, "count": count, "batch": batch})
        conn.execute(text("""
            INSERT INTO saga_steps (saga_id, idx, name, kind, status, attempts, result)
            SELECT s.id, x.idx, 'step' || x.idx, 'compensable', 'succeeded', 1, '{"ok": true}'
            FROM sagas s CROSS JOIN generate_series(0, 3) AS x(idx)
            WHERE s.tenant = :tenant AND s.idempotency_key LIKE :batch || '-%'"""), {"tenant": tenant, "batch": batch})
        conn.execute(text("""
            INSERT INTO saga_events (saga_id, kind) SELECT s.id, k FROM sagas s
            CROSS JOIN unnest(ARRAY['saga_accepted', 'saga_completed']) AS k
            WHERE s.tenant = :tenant AND s.idempotency_key LIKE :batch || '-%'"""), {"tenant": tenant, "batch": batch})
    with db.autocommit() as conn:
        conn.execute(text("ANALYZE sagas"))
        conn.execute(text("ANALYZE saga_steps"))
        conn.execute(text("ANALYZE saga_events"))


def plan(sql: Any, params: dict[str, Any]) -> str:
    with db.transaction() as conn:
        return "\n".join(r[0] for r in conn.execute(text(f"EXPLAIN {sql.text}"), params))


def best_of(fn: Callable[[], Any], rounds: int = 5) -> float:
    """Fastest of `rounds` runs, in milliseconds (the machine is noisy; the floor is what the query costs)."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return min(times)


def test_recovery_listing_and_retention_stay_fast_on_200k_finished_sagas(api: Any) -> None:
    tenant = f"scale-{uuid.uuid4().hex[:8]}"
    _, key = apikeys.create_key(tenant)
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        def first_page() -> None:
            answer = client.get("/v1/sagas", params={"limit": 50})
            assert answer.status_code == 200, answer.text

        def first_page_of_status() -> None:
            assert client.get("/v1/sagas", params={"limit": 50, "status": "compensated"}).status_code == 200

        grow(tenant, 1000, "small")  # before: a ledger of a thousand
        before = {"recovery pass": best_of(recovery.run_once), "listing, first page": best_of(first_page),
                  "listing by status": best_of(first_page_of_status)}
        started = time.perf_counter()
        grow(tenant, SAGAS - 1000, "large")
        grown_in = time.perf_counter() - started
        after = {"recovery pass": best_of(recovery.run_once), "listing, first page": best_of(first_page),
                 "listing by status": best_of(first_page_of_status)}
        page = client.get("/v1/sagas", params={"limit": 50}).json()
        assert len(page["items"]) == 50 and page["next_cursor"]

    print(f"\nledger grown from 1000 to {SAGAS} finished sagas ({SAGAS * 4} steps, {SAGAS * 2} events) in {grown_in:.1f} s")
    for name, was in before.items():
        print(f"  {name:<22} {was:7.2f} ms at 1000  {after[name]:7.2f} ms at {SAGAS}")

    # Each statement reads its index, never the whole table.
    due_plan = plan(recovery._DUE, recovery.due_parameters())
    assert "sagas_active" in due_plan and "Seq Scan on sagas" not in due_plan, due_plan
    prune_plan = plan(retention._PRUNE, {"age": 30 * 86400, "batch": 1000})
    assert "sagas_ended" in prune_plan and "Seq Scan on sagas" not in prune_plan, prune_plan

    started = time.perf_counter()
    batch = retention.prune_batch(timedelta(days=30), 1000)
    one_batch = time.perf_counter() - started
    started = time.perf_counter()
    total = batch + retention.prune(timedelta(days=30), batch=5000)
    pruned_in = time.perf_counter() - started
    print(f"  retention: one batch of 1000 in {one_batch * 1000:.0f} ms; the rest ({total - batch}) in "
          f"{pruned_in:.1f} s, {(total - batch) / pruned_in:.0f} sagas/s")
    with db.transaction() as conn:
        left = conn.execute(text("SELECT count(*) FROM sagas WHERE tenant = :t"), {"t": tenant}).scalar()
    assert total >= SAGAS and left == 0
