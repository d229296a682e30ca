"""The deadline rule (policy.within_deadline) is pure: a decision, a now and a deadline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from retryqueue.policy import (
    RETRY_PAST_DEADLINE,
    Decision,
    Outcome,
    RetryPolicy,
    within_deadline,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def retry_in(seconds: float, count: int = 3) -> Decision:
    return Decision(Outcome.RETRY_SCHEDULED, "pending", count, timedelta(seconds=seconds))


class TestWithinDeadline:
    """A retry past the deadline is moved up to it while time is left, else refused."""

    def test_a_retry_before_the_deadline_stands(self) -> None:
        decision = retry_in(60)
        assert within_deadline(decision, now=NOW, deadline=NOW + timedelta(hours=1)) is decision

    def test_no_deadline_changes_nothing(self) -> None:
        decision = retry_in(10**6)
        assert within_deadline(decision, now=NOW, deadline=None) is decision

    def test_a_backoff_past_the_deadline_is_moved_up_to_it(self) -> None:
        moved = within_deadline(retry_in(7200), now=NOW, deadline=NOW + timedelta(hours=1))
        assert moved == retry_in(3600)

    def test_at_the_deadline_the_item_is_dead_lettered_with_the_reason(self) -> None:
        refused = within_deadline(retry_in(60, count=4), now=NOW, deadline=NOW)
        assert (refused.outcome, refused.status, refused.delay) == (
            Outcome.DEAD_LETTERED,
            "dead_letter",
            None,
        )
        assert refused.retry_count == 3  # the retry count is not raised for a refused retry
        assert refused.reason is not None and refused.reason.startswith(RETRY_PAST_DEADLINE)

    def test_a_retry_after_beyond_the_deadline_is_refused_not_shortened(self) -> None:
        refused = within_deadline(
            retry_in(7200), now=NOW, deadline=NOW + timedelta(hours=1), retry_after_given=True
        )
        assert refused.outcome is Outcome.DEAD_LETTERED

    @pytest.mark.parametrize("outcome", [Outcome.DEAD_LETTERED, Outcome.FAILED])
    def test_final_decisions_pass_through(self, outcome: Outcome) -> None:
        decision = Decision(outcome, outcome.value, 3)
        assert within_deadline(decision, now=NOW, deadline=NOW - timedelta(days=1)) is decision


class TestPolicyRetryFor:
    """A policy's retry_for is a default deadline counted from created_at."""

    def test_the_items_own_deadline_wins(self) -> None:
        policy = RetryPolicy(retry_for=timedelta(hours=1))
        own = NOW + timedelta(minutes=5)
        assert policy.deadline_of(own, NOW) == own
        assert policy.deadline_of(None, NOW) == NOW + timedelta(hours=1)
        assert RetryPolicy().deadline_of(None, NOW) is None

    @pytest.mark.parametrize("seconds", [0, -1, 11 * 365 * 24 * 3600])
    def test_bad_retry_for_is_refused(self, seconds: float) -> None:
        with pytest.raises(ValueError, match="retry_for"):
            RetryPolicy(retry_for=timedelta(seconds=seconds))
