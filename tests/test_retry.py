"""Retry policy: backoff growth, cap, jitter bounds and error classification."""

from __future__ import annotations

import random

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from saga import PermanentError, RetryPolicy, TransientError


def test_backoff_doubles_up_to_the_cap_without_jitter() -> None:
    policy = RetryPolicy(initial_delay=1, multiplier=2, max_delay=5, jitter=False)
    assert [policy.delay(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]


def test_jitter_stays_in_the_upper_half_so_waits_never_shrink() -> None:
    policy = RetryPolicy(initial_delay=0.5, multiplier=3, max_delay=30)
    for seed in range(200):
        rng = random.Random(seed)
        delays = [policy.delay(n, rng) for n in range(1, 7)]
        bases = [min(30, 0.5 * 3 ** (n - 1)) for n in range(1, 7)]
        assert all(b / 2 <= d <= b for d, b in zip(delays, bases))
        below_cap = delays[:4]  # bases 0.5, 1.5, 4.5, 13.5; from the fifth on the cap holds them in [15, 30]
        assert below_cap == sorted(below_cap)
    spread = {round(policy.delay(3, random.Random(s)), 3) for s in range(50)}
    assert len(spread) > 40, "jitter spreads retries of many sagas apart"


def test_classification_and_attempt_budget() -> None:
    class Declined(Exception):
        pass

    policy = RetryPolicy(max_attempts=3, permanent=(PermanentError, Declined), transient=(TransientError,),
                         otherwise="permanent")
    assert policy.classify(Declined()) == "permanent"
    assert policy.classify(TransientError()) == "transient"
    assert policy.classify(KeyError()) == "permanent"
    assert RetryPolicy().classify(KeyError()) == "permanent", "a mistake of the code or the data is not retried"
    assert RetryPolicy().classify(ValueError("header value has a line break")) == "permanent"
    assert RetryPolicy().classify(RuntimeError()) == "transient"
    assert RetryPolicy().classify(SoftTimeLimitExceeded()) == "transient"
    assert policy.may_retry(TransientError(), attempt=2)
    assert not policy.may_retry(TransientError(), attempt=3)
    assert not policy.may_retry(Declined(), attempt=1)


def test_nonsense_policies_are_refused() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(multiplier=0.5)
