"""The API under abuse, against a real `python -m service api` process: a flood of made-up keys, revoked keys,
too many open streams, a locked ledger, a foreign saga id while its row is locked, oversized fields, third-party
error texts, and the headers on every answer."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

import saga
from api import keys as apikeys
from saga.testing import Stack, wait_until
from tests.proxy import Proxy
from tests.test_api import ApiServer, assert_error, serve, settle, start


def bad_key() -> str:
    """A key shaped like a stored one that nobody created."""
    return f"saga_{uuid.uuid4().hex}{uuid.uuid4().hex[:11]}"


def stored_key() -> tuple[int, str]:
    record, key = apikeys.create_key(f"t-{uuid.uuid4().hex[:10]}")
    return record.id, key


@contextmanager
def ledger_behind_proxy(stack: Stack, name: str, **env: str) -> Iterator[tuple[ApiServer, Proxy]]:
    """An API process whose every database byte goes through a proxy that counts them."""
    database = make_url(stack.database_url)
    proxy = Proxy(database.host or "127.0.0.1", database.port or 5432)
    server = serve(stack, name, SAGA_DATABASE_URL=database.set(port=proxy.port).render_as_string(False), **env)
    try:
        yield server, proxy
    finally:
        server.close()
        proxy.close()


def bytes_over(proxy: Proxy, seconds: float) -> int:
    before = proxy.sent
    time.sleep(seconds)
    return proxy.sent - before


def test_a_flood_of_made_up_keys_never_delays_a_valid_key_and_costs_no_queries(stack: Stack) -> None:
    with ledger_behind_proxy(stack, "api-key-flood") as (server, proxy):
        _, valid = stored_key()
        good = server.client(key=valid, timeout=10)
        wait_until(lambda: good.get("/v1/sagas").status_code == 200, timeout=10, what="the stored key to work")
        idle = bytes_over(proxy, 3.0)

        stop = threading.Event()
        answers: Counter[int] = Counter()

        async def flood() -> None:
            """200 clients at once, each sending made-up keys (one in four not even shaped like ours)."""
            async with httpx.AsyncClient(base_url=server.url, timeout=10,
                                         limits=httpx.Limits(max_connections=None)) as client:
                async def one(n: int) -> None:
                    while not stop.is_set():
                        key = bad_key() if n % 4 else "not-even-shaped-like-a-key"
                        try:
                            answer = await client.get("/v1/sagas", headers={"Authorization": f"Bearer {key}"})
                        except httpx.TransportError:  # a pooled connection the server closed as idle
                            answers[0] += 1
                            continue
                        answers[answer.status_code] += 1

                await asyncio.gather(*(one(n) for n in range(200)))

        flooders = [threading.Thread(target=asyncio.run, args=(flood(),), daemon=True)]
        for thread in flooders:
            thread.start()
        try:
            time.sleep(1.0)  # the flood is at full pace before anything is measured
            flood_start, flood_began = answers.total(), time.monotonic()
            flooded_bytes = bytes_over(proxy, 3.0)
            latencies: list[float] = []
            statuses: Counter[int] = Counter()
            for _ in range(100):
                began = time.perf_counter()
                statuses[good.get("/v1/sagas?limit=1").status_code] += 1
                latencies.append(time.perf_counter() - began)
            rate = (answers.total() - flood_start) / (time.monotonic() - flood_began)
            # A key created during the flood works as soon as the API's next read of the stored keys.
            _, fresh = stored_key()
            created = time.monotonic()
            first = server.client(key=fresh, timeout=10).get("/v1/sagas")
            fresh_after = time.monotonic() - created
        finally:
            stop.set()
            for thread in flooders:
                thread.join(15)
        quantiles = statistics.quantiles(latencies, n=100)
        print(f"\nmade-up keys at {rate:.0f}/s ({dict(answers)}): the valid key's 100 answers {dict(statuses)}, "
              f"p50 {quantiles[49] * 1000:.1f} ms, p99 {quantiles[98] * 1000:.1f} ms; a new key answered "
              f"{first.status_code} after {fresh_after:.2f} s; database bytes in 3 s: idle {idle}, "
              f"flooded {flooded_bytes}")
        assert statuses == {200: 100}, statuses
        assert set(answers) - {0} == {401} and answers[0] < answers.total() / 100, answers
        assert first.status_code == 200 and fresh_after < 3.0
        # Made-up keys cost no database work: the flood moves about as many bytes as an idle API.
        assert flooded_bytes <= 2 * idle + 4096, (idle, flooded_bytes)


def test_a_revoked_key_stops_within_a_second_and_its_open_stream_ends(api: ApiServer) -> None:
    key_id, key = stored_key()
    client = api.client(key=key)
    saga_id = start(client, "probe_idle").json()["id"]  # no worker takes it: it stays pending, its stream open
    ended = threading.Event()
    lines: list[str] = []

    def follow() -> None:
        with client.stream("GET", f"/v1/sagas/{saga_id}/stream", timeout=60) as stream:
            assert stream.status_code == 200
            for line in stream.iter_lines():
                lines.append(line)  # noqa: PERF402 - the test reads them while the stream is open
        ended.set()

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    wait_until(lambda: any(line.startswith("data: ") for line in lines), timeout=10, what="the stream's first event")
    assert apikeys.revoke_key(key_id)
    revoked = time.monotonic()
    wait_until(lambda: client.get("/v1/sagas").status_code == 401, timeout=3, interval=0.05,
               what="the revoked key to be refused")
    refused_after = time.monotonic() - revoked
    assert ended.wait(5), "the revoked key's stream is still open"
    closed_after = time.monotonic() - revoked
    print(f"\nrevoked key refused after {refused_after:.2f} s, its stream closed after {closed_after:.2f} s")
    assert refused_after < 1.5 and closed_after < 3.0
    assert ": the API key is no longer valid" in lines


async def _open_streams(url: str, key: str, saga_id: str, count: int) -> tuple[list[int], list[httpx.Response]]:
    """Open `count` streams at once with one key; (status of each, the open ones to close)."""
    client = httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30,
                               limits=httpx.Limits(max_connections=None))
    responses = await asyncio.gather(*(client.send(client.build_request("GET", f"/v1/sagas/{saga_id}/stream"),
                                                   stream=True) for _ in range(count)))
    for refused in (r for r in responses if r.status_code != 200):
        await refused.aread()
    return [r.status_code for r in responses], responses


def test_streams_are_capped_per_tenant_and_in_all_and_end_at_their_maximum_age(stack: Stack) -> None:
    server = serve(stack, "api-streams", SAGA_API_STREAMS="103", SAGA_API_STREAM_SECONDS="3")
    loop = asyncio.new_event_loop()
    try:
        alpha, beta = server.client("alpha"), server.client("beta")
        mine = start(alpha, "probe_idle").json()["id"]
        theirs = start(beta, "probe_idle").json()["id"]
        statuses, held = loop.run_until_complete(_open_streams(server.url, server.keys["alpha"], mine, 100))
        assert statuses == [200] * 100
        over = alpha.get(f"/v1/sagas/{mine}/stream")
        refused = assert_error(over, 429, "too_many_requests")
        assert "this tenant already has 100 streams" in refused["message"], refused
        assert_error(alpha.get(f"/v1/sagas/{mine}?wait=5"), 429, "too_many_requests")  # a long poll is one too
        print(f"\nthe 101st stream of one tenant: {over.status_code} {refused['message']!r}")

        statuses, more = loop.run_until_complete(_open_streams(server.url, server.keys["beta"], theirs, 4))
        held += more
        assert sorted(statuses) == [200, 200, 200, 429], statuses  # another tenant gets what is left of 103
        assert "the API already holds 103" in next(r for r in more if r.status_code == 429).json()["error"]["message"]

        # Each stream ends by itself at its maximum age (3 s here), giving its place back.
        began = time.monotonic()
        wait_until(lambda: beta.get(f"/v1/sagas/{theirs}?wait=0.1").status_code == 200, timeout=10,
                   what="places to come back as streams reach their maximum age")
        print(f"streams ended at their maximum age after {time.monotonic() - began:.1f} s")
        last = loop.run_until_complete(held[0].aread()).decode()
        assert "reached its maximum age" in last, last[-200:]
    finally:
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        server.close()


def test_health_and_metrics_read_the_ledger_once_a_second_and_ui_answers_at_once_while_it_is_locked(
        stack: Stack) -> None:
    with ledger_behind_proxy(stack, "api-locked") as (server, proxy):
        client = server.client(timeout=30)
        assert client.get("/healthz").status_code == 200
        idle = bytes_over(proxy, 3.0)

        def hammer(clients: int, seconds: float) -> Counter[int]:
            """`clients` callers of /healthz and /metrics, each asking again as soon as it has its answer."""
            answered: Counter[int] = Counter()
            until = time.monotonic() + seconds

            def ask(path: str) -> None:
                with httpx.Client(base_url=server.url, timeout=30) as own:
                    while time.monotonic() < until:
                        answered[own.get(path).status_code] += 1

            threads = [threading.Thread(target=ask, args=("/healthz" if i % 2 else "/metrics",), daemon=True)
                       for i in range(clients)]
            for thread in threads:
                thread.start()
            return answered

        flood = hammer(60, 4.0)
        time.sleep(1.0)
        flooded = bytes_over(proxy, 3.0)
        wait_until(lambda: threading.active_count() < 10, timeout=30, what="the flood to end")

        engine = create_engine(stack.database_url)
        try:
            with engine.connect() as locker:
                locker.execute(text("LOCK TABLE sagas IN ACCESS EXCLUSIVE MODE"))
                during = hammer(10, 3.0)  # scrapes and health checks in flight against the locked ledger
                time.sleep(1.0)
                timings = []
                for _ in range(5):
                    began = time.perf_counter()
                    assert client.get("/ui").status_code == 200
                    timings.append(time.perf_counter() - began)
                # Health answers from its last reading, then from one that hit the lock and said so.
                health_took: list[float] = []

                def health_says_down() -> bool:
                    began = time.perf_counter()
                    answer = client.get("/healthz")
                    health_took.append(time.perf_counter() - began)
                    return answer.status_code == 503 and answer.json()["database"]["ok"] is False

                wait_until(health_says_down, timeout=8, interval=0.2, what="/healthz to report the locked ledger")
                locker.rollback()
        finally:
            engine.dispose()
        wait_until(lambda: threading.active_count() < 10, timeout=30, what="the callers to end")
        print(f"\n/healthz and /metrics from 60 clients ({dict(flood)}): database bytes in 3 s: idle {idle}, "
              f"flooded {flooded}; ledger locked ({dict(during)}): /ui in "
              f"{', '.join(f'{t * 1000:.0f}' for t in timings)} ms, /healthz 503 after {len(health_took)} tries, "
              f"the slowest in {max(health_took):.2f} s")
        assert statistics.median(timings) < 0.1 and max(timings) < 0.5, timings
        assert max(health_took) < 3.0, health_took
        assert flooded <= 2 * idle + 8192, (idle, flooded)  # about one ledger reading a second, not one a request
        wait_until(lambda: client.get("/healthz").status_code == 200, timeout=10, what="health once unlocked")


def test_a_foreign_saga_is_404_even_while_its_row_is_locked(api: ApiServer, stack: Stack) -> None:
    owner, other = api.new_tenant(), api.new_tenant()
    saga_id = start(owner, "probe_idle").json()["id"]
    engine = create_engine(stack.database_url)
    try:
        with engine.connect() as holder:
            holder.execute(text("SELECT id FROM sagas WHERE id = :id FOR UPDATE"), {"id": saga_id})
            for action in ("cancel", "resume", "compensate"):
                began = time.monotonic()
                assert_error(other.post(f"/v1/sagas/{saga_id}/{action}"), 404, "saga_not_found")
                assert time.monotonic() - began < 2.0, "the foreign id waited for the lock"
            busy = assert_error(owner.post(f"/v1/sagas/{saga_id}/cancel"), 409, "action_not_allowed")
            assert "busy" in busy["message"]  # the lock is really held: its owner waits, then hears so
            holder.rollback()
    finally:
        engine.dispose()


def test_every_answer_says_nosniff_and_nothing_but_static_files_is_stored(api: ApiServer) -> None:
    client = api.client("alpha")
    answers = {path: client.get(path) for path in (
        "/v1/sagas", f"/v1/sagas/{uuid.uuid4()}", "/healthz", "/metrics", "/openapi.json", "/docs", "/redoc", "/ui",
        "/no-such-page")}
    answers["401"] = api.client().get("/v1/sagas")
    answers["413"] = client.post("/v1/sagas", content=b"x" * (2 * 1024 * 1024),
                                 headers={"Content-Type": "application/json", "Idempotency-Key": "k"})
    for name, response in answers.items():
        assert response.headers.get("X-Content-Type-Options") == "nosniff", name
        assert response.headers.get("Cache-Control") == "no-store", (name, response.headers.get("Cache-Control"))
    asset = client.get("/ui/assets/console.js")
    assert asset.status_code == 200 and asset.headers["X-Content-Type-Options"] == "nosniff"
    assert "no-store" not in asset.headers.get("Cache-Control", "")


def test_an_inline_field_over_its_bound_is_refused_naming_it_and_nothing_is_written(api: ApiServer) -> None:
    client = api.new_tenant()
    answer = client.post("/v1/sagas", json={"type": "probe_idle", "input": {"answer": "x" * (70 * 1024)}},
                         headers={"Idempotency-Key": "too-big"})
    error = assert_error(answer, 422, "invalid_input")
    assert [d["field"] for d in error["details"]] == ["input.answer"], error
    assert "at most 65536 inline" in error["details"][0]["message"]
    assert client.get("/v1/sagas", params={"idempotency_key": "too-big"}).json()["items"] == []


def test_a_third_partys_error_text_reaches_operators_but_tenants_see_its_kind(api: ApiServer, workers: Stack) -> None:
    client = api.new_tenant()
    saga_id = start(client, "probe", {"lost_answer": {"a": 99}}).json()["id"]  # step a never hears an answer
    shown = settle(client, saga_id)
    full = saga.load(uuid.UUID(saga_id))
    assert shown["status"] == full.status == "compensated", shown
    assert (full.error or "").startswith("step a failed: TimeoutError: a attempt"), full.error
    assert "no answer (the effect happened)" in (full.error or "")
    withheld = "TimeoutError (details withheld; operators see them in the logs and the CLI)"
    assert shown["error"] == f"step a failed: {withheld}"
    events = client.get(f"/v1/sagas/{saga_id}/events").json()["items"]
    texts = [str(e["detail"]) for e in events]
    assert not any("no answer" in t for t in texts), texts
    assert any(withheld in t for t in texts)


def test_revocation_and_health_hold_while_busy_routes_take_every_thread_and_connection(stack: Stack) -> None:
    """With `sagas` locked (a migration, a stuck query), 60 listings hold every thread of the API's pool and every
    pooled connection; the key reader and the health check have their own, so neither waits behind them."""
    server = serve(stack, "api-starved")
    engine = create_engine(stack.database_url)
    try:
        key_id, victim = stored_key()
        client = server.client(key=victim, timeout=10)
        wait_until(lambda: client.get("/v1/sagas").status_code == 200, timeout=10, what="the stored key to work")
        with engine.connect() as locker:
            locker.execute(text("LOCK TABLE sagas IN ACCESS EXCLUSIVE MODE"))

            async def listings() -> None:
                async with httpx.AsyncClient(base_url=server.url, timeout=30,
                                             limits=httpx.Limits(max_connections=None),
                                             headers={"Authorization": f"Bearer {server.keys['alpha']}"}) as busy:
                    await asyncio.gather(*(busy.get("/v1/sagas?limit=1") for _ in range(60)),
                                         return_exceptions=True)

            flood = threading.Thread(target=asyncio.run, args=(listings(),), daemon=True)
            flood.start()
            time.sleep(1.5)  # every thread and connection of the routes now waits on the lock
            assert apikeys.revoke_key(key_id)
            revoked = time.monotonic()
            def refused() -> bool:
                """A refusal needs no thread; a request the key still passes waits for one, so it times out."""
                try:
                    return client.get(f"/v1/sagas/{uuid.uuid4()}/events", timeout=0.5).status_code == 401
                except httpx.TimeoutException:
                    return False

            wait_until(refused, timeout=5, interval=0.1, what="the revoked key to be refused while the routes are busy")
            refused_after = time.monotonic() - revoked
            began = time.monotonic()
            health = httpx.get(f"{server.url}/healthz", timeout=10)
            health_took = time.monotonic() - began
            locker.rollback()
        flood.join(30)
        print(f"\nroutes held by a locked table: a revoked key refused after {refused_after:.2f} s, /healthz "
              f"{health.status_code} in {health_took:.2f} s")
        assert refused_after < 2.5
        assert health.status_code == 503 and health_took < 5.0
    finally:
        engine.dispose()
        server.close()
