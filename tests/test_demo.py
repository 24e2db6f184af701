"""The demo saga type's input over the real HTTP API: every field is bounded, so an oversized one is refused."""

from __future__ import annotations

from tests.test_api import ApiServer, assert_error, sagas_of, start


def test_an_oversized_customer_is_a_422_naming_the_field_and_starts_nothing(api: ApiServer) -> None:
    client = api.new_tenant()
    error = assert_error(start(client, "demo", {"customer": "x" * 201, "amount_cents": 1, "step_seconds": 0}),
                         422, "invalid_input")
    assert [p["field"] for p in error["details"]] == ["input.customer"], error
    assert "at most 200 characters" in error["details"][0]["message"], error
    assert sagas_of(client) == 0
    made = start(client, "demo", {"customer": "x" * 200, "amount_cents": 1, "step_seconds": 0})
    assert made.status_code == 202, made.text
