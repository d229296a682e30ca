"""Circuit keys and other identifiers compare exactly (case and accents) on every backend.

MariaDB/MySQL compare strings with the column's collation, and a database created with
the server's default one (``utf8mb4_general_ci``) would make ``Pay`` equal ``pay``; the
test databases use the server default, as real deployments do.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import CircuitBreaker, ItemFilter, NewItem, RetryQueue, RetryStatus
from retryqueue.models import RetryCircuit, RetryItem

PENDING = (RetryStatus.PENDING,)


def failures(count: int, plugin: str) -> list[tuple[str, str, bool]]:
    return [(plugin, "capture", False)] * count


class TestCircuitKeysAreExact:
    """`pay` and `Pay` are two circuits; skipping one never blocks the other."""

    def test_two_keys_differing_in_case_are_two_circuits(
        self, breaker: CircuitBreaker, sessions: sessionmaker[Session]
    ) -> None:
        with sessions.begin() as session:
            breaker.record(session, failures(1, "pay"))
        with sessions.begin() as session:
            breaker.record(session, failures(3, "Pay"))  # raised KeyError('pay') on MariaDB
        with sessions.begin() as session:
            assert breaker.gate(session).blocked == {"Pay"}
            keys = session.scalars(select(RetryCircuit.circuit_key)).all()
        assert sorted(keys) == ["Pay", "pay"]

    def test_skipping_a_key_does_not_skip_another_case(
        self, queue: RetryQueue, sessions: sessionmaker[Session]
    ) -> None:
        with sessions.begin() as session:
            upper, lower = queue.enqueue_many(
                session, [NewItem("a", {}, plugin_name="Pay"), NewItem("a", {}, plugin_name="pay")]
            )
        with sessions.begin() as session:
            claimed = queue.acquire(session, "w", 10, skip_keys={"pay"})
        assert [item.id for item in claimed] == [upper.id]
        with sessions.begin() as session:
            claimed = queue.acquire(session, "w", 10, only_key="pay")
        assert [item.id for item in claimed] == [lower.id]


class TestIdentifiersAreExact:
    """Filters on plugin, event type, channel and worker match exactly, as on PostgreSQL."""

    def test_filters_are_case_sensitive(
        self, queue: RetryQueue, sessions: sessionmaker[Session]
    ) -> None:
        with sessions.begin() as session:
            made = queue.enqueue_many(
                session,
                [
                    NewItem("Sent", {}, plugin_name="Mail", channel_name="Ops"),
                    NewItem("sent", {}, plugin_name="mail", channel_name="ops"),
                ],
            )
        with sessions() as session:
            for item_filter in (
                ItemFilter(statuses=PENDING, plugin_name="mail"),
                ItemFilter(statuses=PENDING, event_type="sent"),
                ItemFilter(statuses=PENDING, channel_name="ops"),
            ):
                assert [item.id for item in queue.find(session, item_filter)] == [made[1].id]

    def test_a_worker_id_differing_in_case_is_another_worker(
        self, queue: RetryQueue, sessions: sessionmaker[Session]
    ) -> None:
        with sessions.begin() as session:
            queue.enqueue(session, "a", {})
        with sessions.begin() as session:
            (item,) = queue.acquire(session, "Worker-1", 10)
        with sessions.begin() as session:  # the operator's view: locked_by compared exactly
            held_by = select(func.count()).where(RetryItem.locked_by == "worker-1")
            assert session.scalar(held_by) == 0
            held_by = select(func.count()).where(RetryItem.locked_by == "Worker-1")
            assert session.scalar(held_by) == 1
            assert queue.release(session, "Worker-1", lease_token=item.lease_token) == [item.id]
