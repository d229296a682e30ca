"""The retry policy: pure Python, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from retryqueue import Outcome, RetryPolicy, backoff_delay, calculate_next_retry


class TestBackoffDelay:
    """delay x multiplier^retry_count, capped, with bounded jitter."""

    def test_documented_schedule_starts_at_multiplier_to_the_zero(self) -> None:
        assert [backoff_delay(n, 60, 2).total_seconds() for n in range(4)] == [60, 120, 240, 480]

    def test_other_settings(self) -> None:
        assert [backoff_delay(n, 30, 1.5).total_seconds() for n in range(3)] == [30, 45, 67.5]
        assert backoff_delay(5, 0, 2) == timedelta(0)

    def test_cap(self) -> None:
        cap = timedelta(minutes=5)
        assert backoff_delay(10, 60, 2, max_delay=cap) == cap

    def test_huge_exponents_do_not_overflow(self) -> None:
        delay = backoff_delay(10_000, 60, 9.99)
        assert delay > timedelta(days=365)
        assert backoff_delay(10_000, 60, 9.99, max_delay=timedelta(hours=1)) == timedelta(hours=1)

    @pytest.mark.parametrize("draw", [0.0, 0.25, 0.5, 0.999999])
    def test_jitter_stays_within_its_band_and_under_the_cap(self, draw: float) -> None:
        delay = backoff_delay(1, 60, 2, jitter=0.5, rand=lambda: draw).total_seconds()
        assert 60 <= delay <= 180
        capped = backoff_delay(
            1, 60, 2, jitter=0.5, max_delay=timedelta(seconds=130), rand=lambda: draw
        )
        assert capped <= timedelta(seconds=130)

    def test_jitter_extremes(self) -> None:
        assert backoff_delay(0, 100, 2, jitter=0.2, rand=lambda: 0.0).total_seconds() == 80
        assert backoff_delay(0, 100, 2, jitter=0.2, rand=lambda: 0.5).total_seconds() == 100

    @pytest.mark.parametrize("kwargs", [{"jitter": -0.1}, {"jitter": 1.5}])
    def test_bad_jitter(self, kwargs: dict[str, float]) -> None:
        with pytest.raises(ValueError, match="jitter"):
            backoff_delay(0, 60, 2, **kwargs)
        with pytest.raises(ValueError, match="jitter"):
            RetryPolicy(**kwargs)

    def test_next_retry_time(self) -> None:
        now = datetime(2026, 1, 1, tzinfo=UTC)
        assert calculate_next_retry(2, 60, 2, now=now) == now + timedelta(minutes=4)


class TestDecide:
    """The decision on a failed attempt."""

    policy = RetryPolicy()

    def test_retry_until_max_retries_then_dead_letter(self) -> None:
        decisions = [
            self.policy.decide(
                retry_count=n, max_retries=3, retry_delay_seconds=60, backoff_multiplier=2.0
            )
            for n in range(4)
        ]
        assert [d.outcome for d in decisions] == [Outcome.RETRY_SCHEDULED] * 3 + [
            Outcome.DEAD_LETTERED
        ]
        assert [d.retry_count for d in decisions] == [1, 2, 3, 3]
        assert [d.delay for d in decisions[:3]] == [
            timedelta(seconds=60),
            timedelta(seconds=120),
            timedelta(seconds=240),
        ]
        assert decisions[3].status == "dead_letter" and decisions[3].delay is None

    def test_max_retries_zero_dead_letters_on_first_failure(self) -> None:
        decision = self.policy.decide(
            retry_count=0, max_retries=0, retry_delay_seconds=60, backoff_multiplier=2
        )
        assert decision.outcome is Outcome.DEAD_LETTERED

    def test_permanent_failure(self) -> None:
        decision = self.policy.decide(
            retry_count=0,
            max_retries=3,
            retry_delay_seconds=60,
            backoff_multiplier=2,
            retryable=False,
        )
        assert (decision.outcome, decision.status, decision.retry_count) == (
            Outcome.FAILED,
            "failed",
            0,
        )

    def test_retry_after_is_honoured_beyond_the_cap(self) -> None:
        capped = RetryPolicy(max_delay=timedelta(seconds=10))
        decision = capped.decide(
            retry_count=0,
            max_retries=3,
            retry_delay_seconds=60,
            backoff_multiplier=2,
            retry_after=timedelta(seconds=90),
        )
        assert decision.delay == timedelta(seconds=90)
        assert decision.retry_count == 1

    def test_retry_after_still_dead_letters_when_exhausted(self) -> None:
        decision = self.policy.decide(
            retry_count=3,
            max_retries=3,
            retry_delay_seconds=60,
            backoff_multiplier=2,
            retry_after=timedelta(seconds=5),
        )
        assert decision.outcome is Outcome.DEAD_LETTERED
