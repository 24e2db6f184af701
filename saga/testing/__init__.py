"""The crash-test kit: run your saga types through real workers on a private database, kill them, check.

    pytest_plugins = ["saga.testing.plugin"]        # fixtures saga_stack and saga_crashes; see plugin.py

    @pytest.mark.parametrize("point", crash_points(orders), ids=str)
    def test_orders_survive_a_crash(saga_crashes, point):
        outcome = saga_crashes.run(orders, {"sku": "A1", "quantity": 2}, point)
        assert outcome.record.status == "completed"
        assert shipments(outcome.record.id) == 1       # count in your own records, every row
"""

from saga.testing.crashes import CrashOutcome, CrashPoint, CrashTester, crash_points
from saga.testing.databases import create_database, drop_database, with_database
from saga.testing.processes import Process
from saga.testing.stack import Stack, claim_redis_db, wait_for_status, wait_until, with_redis_db

__all__ = [
    "CrashOutcome", "CrashPoint", "CrashTester", "Process", "Stack", "claim_redis_db", "crash_points",
    "create_database", "drop_database", "wait_for_status", "wait_until", "with_database", "with_redis_db",
]
