"""What a tenant is told of a failure (saga.disclosure), on the texts the engine records: no third party's words,
wherever in the text they sit and whatever they imitate."""

from __future__ import annotations

from saga import PermanentError, TransientError
from saga.disclosure import WITHHELD, as_recorded, classified, classified_reason, gave_up, step_failed

SECRET = "10.1.2.3 password=hunter2"


def _raised_from(exc: Exception, cause: Exception) -> Exception:
    try:
        raise exc from cause
    except Exception as caught:  # noqa: BLE001 - the exception itself is what the test looks at
        return caught


def test_an_authored_error_is_shown_without_the_third_party_text_it_was_raised_from() -> None:
    error = as_recorded(_raised_from(TransientError("S3 unreachable"), ConnectionError(
        'Could not connect to the endpoint URL: "http://minio.corp.internal:9000/job-logos/acme.png"')))
    assert error == ('TransientError: S3 unreachable\ncaused by ConnectionError: Could not connect to the endpoint '
                     'URL: "http://minio.corp.internal:9000/job-logos/acme.png"')
    assert classified(error) == "TransientError: S3 unreachable"
    assert classified_reason(step_failed("upload_logo", error)) == "step upload_logo failed: TransientError: S3 unreachable"


def test_every_cause_of_a_chain_is_recorded_for_operators() -> None:
    inner = _raised_from(OSError(f"no route to {SECRET}"), TimeoutError("connect timed out"))
    error = as_recorded(_raised_from(PermanentError("mail server refused the message"), inner))
    assert error == (f"PermanentError: mail server refused the message\ncaused by OSError: no route to {SECRET}"
                     "\ncaused by TimeoutError: connect timed out")
    assert classified(error) == "PermanentError: mail server refused the message"


def test_a_third_party_text_that_imitates_the_engines_separators_shows_nothing_of_itself() -> None:
    shown = classified_reason("step c failed: HTTPError: 500 from 10.1.2.3 step x failed: PermanentError: db "
                              "password=hunter2")
    assert shown == f"step c failed: HTTPError ({WITHHELD})"
    imitating = f"HTTPError: 500; compensation of y gave up: PermanentError: db {SECRET}"
    for reason in (gave_up([("a", imitating), ("b", "PermanentError: no such row")], rewind_to=None),
                   gave_up([("a", imitating)], rewind_to="a"),
                   gave_up([("a", f"HTTPError: 500\ncompensation of y gave up: PermanentError: {SECRET}")], None)):
        shown = classified_reason(reason)
        assert "hunter2" not in str(shown), shown
        assert str(shown).count("HTTPError") == 1 and f"compensation of a gave up: HTTPError ({WITHHELD})" in str(shown)


def test_the_cause_of_an_authored_error_is_withheld_wherever_the_error_is_quoted() -> None:
    error = as_recorded(_raised_from(PermanentError("card declined: insufficient_funds"), ValueError(SECRET)))
    reason = gave_up([("charge_payment", error), ("upload_logo", f"ClientError: {SECRET}")], rewind_to="create")
    assert reason == (f"rewind to create: compensation of charge_payment gave up: PermanentError: card declined: "
                      f"insufficient_funds\n  caused by ValueError: {SECRET}\n"
                      f"compensation of upload_logo gave up: ClientError: {SECRET}")
    assert classified_reason(reason) == (
        "rewind to create: compensation of charge_payment gave up: PermanentError: card declined: insufficient_funds\n"
        f"compensation of upload_logo gave up: ClientError ({WITHHELD})")


def test_the_engines_own_words_are_shown_whole() -> None:
    for reason in ("cancelled", "no input for step c by 2026-12-05T10:00:00+00:00: c needs an answer"):
        assert classified_reason(reason) == reason
    lost = "all 5 attempts ended without an outcome (worker lost or timed out)"
    assert classified(lost) == lost
    assert classified_reason(step_failed("a", lost)) == f"step a failed: {lost}"
