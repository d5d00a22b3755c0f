"""The throttle that keeps refusals of unidentified callers from flooding an incident's audit trail."""

from __future__ import annotations

from workers.web.auth import RefusalThrottle, scrub


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_record_per_incident_and_source_a_minute_then_the_count_of_the_rest() -> None:
    clock = Clock()
    throttle = RefusalThrottle(window=60, clock=clock)
    assert throttle.admit("inc-1", "10.0.0.9") == 1
    assert [throttle.admit("inc-1", "10.0.0.9") for _ in range(500)] == [None] * 500
    assert throttle.admit("inc-2", "10.0.0.9") == 1  # another incident has its own record
    assert throttle.admit("inc-1", "10.0.0.7") == 1  # and another source
    clock.now += 61
    assert throttle.admit("inc-1", "10.0.0.9") == 501  # this one and the 500 only counted
    assert throttle.admit("inc-1", "10.0.0.9") is None


def test_the_throttle_forgets_the_oldest_source_beyond_its_limit() -> None:
    throttle = RefusalThrottle(window=60, limit=3, clock=Clock())
    for n in range(10):
        assert throttle.admit("inc", f"10.0.0.{n}") == 1
    assert len(throttle._seen) == 3


def test_scrub_removes_the_presented_credential_and_its_jwt_parts() -> None:
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJVMDQifQ.c2lnbmF0dXJlLWJ5dGVz"
    text = f"not valid: header eyJhbGciOiJSUzI1NiJ9 and {token}"
    cleaned = scrub(text, f"Bearer {token}")
    assert "eyJ" not in cleaned and "c2lnbmF0" not in cleaned and cleaned.startswith("not valid: header")


def test_one_source_naming_many_incidents_is_recorded_at_most_per_source_times_a_window() -> None:
    clock = Clock()
    throttle = RefusalThrottle(window=60, per_source=3, clock=clock)
    assert [throttle.admit(f"inc-{n}", "10.0.0.9") for n in range(10)] == [1, 1, 1] + [None] * 7
    assert throttle.admit("inc-0", "10.0.0.8") == 1  # another source is not held back
    clock.now += 61
    assert throttle.admit("inc-5", "10.0.0.9") == 1
