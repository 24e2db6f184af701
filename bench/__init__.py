"""Throughput benchmark: sagas against plain Celery chains on the same worker, Redis and PostgreSQL."""
