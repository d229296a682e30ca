"""The pipeline's rules for transactions in flight (pure bookkeeping, no database).

A worker may run up to ``depth`` pipeline transactions at once. What must hold whatever the
timing: the items claims in flight may bring count against the prefetch bound, no new
transaction starts while a lease renewal waits or runs, the drive is never over while a
transaction is in flight, and items a claim brings after shutdown began are given back.
"""

from __future__ import annotations

import pytest

from retryqueue.results import ClaimedItem
from retryqueue.worker._batch import Finished
from retryqueue.worker._pipeline import GiveBack, Governor, Pipeline, Step, Wait
from tests.support.items import claimed

NOW = 1000.0


def pipeline(depth: int = 2) -> Pipeline:
    return Pipeline(batch_size=10, prefetch=10, flush_age=0.005, ready_timeout=30, depth=depth)


def launch(pipe: Pipeline) -> Step:
    step = pipe.next_step(NOW, stopping=False, deadline=None)
    assert isinstance(step, Step), step
    pipe.launch(step)
    return step


def run_all(pipe: Pipeline) -> None:
    """Handlers take every ready item and finish it (successfully)."""
    while (item := pipe.next_item(stopping=False)) is not None:
        pipe.finish(Finished(item, None, None, 0.001, finished_at=NOW))


class TestDepth:
    def test_a_claim_alone_waits_for_the_claim_in_flight(self) -> None:
        pipe = pipeline()
        first = launch(pipe)
        assert first == Step([], 10)
        # Nothing to record and a claim out: a second claim would only double the empty
        # round trips of an idle queue.
        assert pipe.next_step(NOW, stopping=False, deadline=None) is None

    def test_side_by_side_a_claim_alone_goes_out_beside_the_one_in_flight(self) -> None:
        """The thread worker's drivers taking turns at the handlers each claim the batch of
        their next turn while the other's transaction is out: still within the prefetch
        bound, and never a third beside two."""
        pipe = pipeline()
        pipe.side_by_side = pipe.flowing = True
        launch(pipe)
        second = launch(pipe)
        assert second == Step([], 10)  # 0 ready + 10 coming: within prefetch 10
        assert pipe.claims_in_flight == 20
        assert pipe.next_step(NOW, stopping=False, deadline=None) is None  # depth 2: no room

    def test_side_by_side_claims_wait_for_a_full_claim_after_a_short_one(self) -> None:
        """An idle queue woken by a NOTIFY costs one claim, not one per driver: after a
        claim came back short, a claim alone waits for the one in flight again."""
        pipe = pipeline()
        pipe.side_by_side = pipe.flowing = True
        assert pipe.claim_landed(10, 3)  # a claim came back short
        pipe.claim_at = 0.0  # ... and a NOTIFY woke the worker
        launch(pipe)
        assert pipe.next_step(NOW, stopping=False, deadline=None) is None
        assert not pipe.claim_landed(10, 10)  # a claim came back full
        assert pipe.next_step(NOW, stopping=False, deadline=None) == Step([], 10)

    def test_side_by_side_claims_keep_the_prefetch_bound(self) -> None:
        pipe = pipeline(depth=3)
        pipe.side_by_side = pipe.flowing = True
        first = launch(pipe)
        pipe.add(claimed(item_id=n) for n in range(10))
        pipe.landed(first)
        assert launch(pipe) == Step([], 10)  # 10 ready + 0 coming
        # 10 ready + 10 coming: over the bound, however many may be in flight (a wait,
        # until the oldest ready item would be given back).
        assert not isinstance(pipe.next_step(NOW, stopping=False, deadline=None), Step)

    def test_claims_in_flight_count_against_the_prefetch_bound(self) -> None:
        pipe = pipeline()
        first = launch(pipe)
        pipe.add(claimed(item_id=n) for n in range(10))
        pipe.landed(first)
        run_all(pipe)  # ten outcomes to record
        second = launch(pipe)
        assert (len(second.outcomes), second.claim) == (10, 10)
        run_all(pipe)
        pipe.add(claimed(item_id=n) for n in range(10, 20))  # ... while the second claim is out
        assert pipe.claim_size(NOW, stopping=False) == 0  # 10 ready + 10 coming > prefetch

    def test_no_more_than_depth_transactions_at_once(self) -> None:
        pipe = pipeline(depth=2)
        first = launch(pipe)
        pipe.add(claimed(item_id=n) for n in range(10))
        pipe.landed(first)
        run_all(pipe)
        launch(pipe)
        pipe.add(claimed(item_id=n) for n in range(10, 15))  # (as if) more came in meanwhile
        run_all(pipe)
        third = launch(pipe)  # depth 2: the second of two in flight
        assert pipe.in_flight == 2
        pipe.add(claimed(item_id=n) for n in range(15, 20))
        run_all(pipe)
        assert pipe.next_step(NOW, stopping=False, deadline=None) is None  # no room
        pipe.landed(third)
        assert isinstance(pipe.next_step(NOW, stopping=False, deadline=None), Step)

    def test_depth_one_runs_one_transaction_at_a_time(self) -> None:
        pipe = pipeline(depth=1)
        first = launch(pipe)
        pipe.add(claimed(item_id=n) for n in range(10))
        run_all(pipe)  # outcomes wait while the first transaction is still out
        assert pipe.next_step(NOW, stopping=False, deadline=None) is None
        pipe.landed(first)
        assert isinstance(pipe.next_step(NOW, stopping=False, deadline=None), Step)

    def test_no_transaction_starts_while_a_renewal_waits_or_runs(self) -> None:
        pipe = pipeline()
        first = launch(pipe)
        pipe.add(claimed(item_id=n) for n in range(10))
        pipe.landed(first)
        run_all(pipe)
        pipe.renewing = True
        assert pipe.quiet()
        assert pipe.next_step(NOW, stopping=False, deadline=None) is None
        pipe.renewing = False
        assert isinstance(pipe.next_step(NOW, stopping=False, deadline=None), Step)


class TestShutdown:
    def test_the_drive_is_not_over_while_a_transaction_is_in_flight(self) -> None:
        pipe = pipeline()
        first = launch(pipe)
        assert pipe.next_step(NOW, stopping=True, deadline=NOW + 30) == 30  # wait, not done
        pipe.landed(first)
        assert pipe.next_step(NOW, stopping=True, deadline=NOW + 30) is Wait.DONE

    def test_items_a_claim_brings_after_shutdown_began_are_given_back(self) -> None:
        pipe = pipeline()
        first = launch(pipe)
        pipe.add(claimed(item_id=n) for n in range(3))  # the claim lands after stop()
        pipe.landed(first)
        step = pipe.next_step(NOW, stopping=True, deadline=NOW + 30)
        assert isinstance(step, GiveBack)
        assert (sorted(item.id for item in step.items), step.why) == ([0, 1, 2], "unstarted")
        assert pipe.next_step(NOW, stopping=True, deadline=NOW + 30) is Wait.DONE

    def test_abandoning_waits_for_transactions_in_flight(self) -> None:
        pipe = pipeline()
        first = launch(pipe)
        pipe.add([claimed(item_id=1)])
        pipe.landed(first)
        assert pipe.next_item(stopping=False) is not None  # a handler runs, and runs
        second = launch(pipe)  # (a claim: the running handler is not idle)
        late = NOW + 60
        assert pipe.next_step(late, stopping=True, deadline=NOW + 30) is None
        pipe.landed(second)
        assert pipe.next_step(late, stopping=True, deadline=NOW + 30) is Wait.ABANDON


class TestClaimedRows:
    def test_claim_columns_are_the_claimed_items_fields_in_order(self) -> None:
        """claimed_item() reads a claim's row by position: the statement's RETURNING
        columns and ClaimedItem's fields must stay in the same order."""
        from dataclasses import fields

        from retryqueue.statements.claims import CLAIM_COLUMNS

        names = [column.key for column in CLAIM_COLUMNS]
        assert names == [field.name for field in fields(ClaimedItem)]


class TestGovernor:
    """The default in_flight adapts: a second transaction only while the worker gets
    through its work faster with it."""

    def run_windows(
        self,
        governor: Governor,
        one: float,
        two: float,
        n: int,
        *,
        flowing: bool = True,
        clock: list[float] | None = None,
    ) -> list[float]:
        """Land ``n`` windows of transactions, ``one`` or ``two`` per second by setting."""
        now = clock or [100.0]
        for _ in range(n * Governor.WINDOW):
            now[0] += 1 / (one if governor.allowed() == 1 else two)
            governor.note(now[0], flowing)
        return now

    def test_keeps_two_while_two_land_faster(self) -> None:
        governor = Governor(2)
        self.run_windows(governor, one=800, two=1100, n=3)
        assert governor.chosen == 2
        assert governor.rates[2] == pytest.approx(1100)
        assert governor.rates[1] == pytest.approx(800)

    def test_drops_to_one_when_a_second_only_slows_the_worker_down(self) -> None:
        governor = Governor(2)
        self.run_windows(governor, one=1000, two=850, n=3)
        assert governor.chosen == 1
        assert governor.allowed() == 2  # still probing two as each window starts

    def test_a_small_edge_for_one_is_not_enough(self) -> None:
        governor = Governor(2)
        self.run_windows(governor, one=1050, two=1000, n=3)
        assert governor.chosen == 2

    def test_comes_back_to_two_when_it_pays_again(self) -> None:
        governor = Governor(2)
        clock = self.run_windows(governor, one=1000, two=600, n=3)
        assert governor.chosen == 1
        self.run_windows(governor, one=1000, two=1500, n=12, clock=clock)
        assert governor.chosen == 2

    def test_a_queue_running_dry_decides_nothing(self) -> None:
        """Short claims: the landings measure the producers, not the worker."""
        governor = Governor(2)
        self.run_windows(governor, one=1000, two=300, n=4, flowing=False)
        assert governor.chosen == 2
        assert governor.rates == {}

    def test_the_first_landing_of_a_phase_starts_its_clock(self) -> None:
        """It was launched under the other setting: a long gap before it says nothing."""
        governor = Governor(2)
        now = 100.0
        for number in range(Governor.WINDOW):
            now += 5.0 if number in (0, Governor.PROBES) else 0.001
            governor.note(now, True)
        assert governor.rates[1] == pytest.approx(1000)
        assert governor.rates[2] == pytest.approx(1000)

    def test_probes_are_a_small_share_of_each_window(self) -> None:
        governor = Governor(2)
        shares = []
        now = 0.0
        for _ in range(Governor.WINDOW):
            shares.append(governor.allowed())
            now += 0.001
            governor.note(now, True)
        assert shares.count(1) == Governor.PROBES

    def test_probes_less_often_while_one_setting_is_clearly_ahead(self) -> None:
        governor = Governor(2)
        clock = self.run_windows(governor, one=600, two=1000, n=2)
        assert governor.every == Governor.CLEAR_EVERY
        shares = []
        for _ in range(Governor.CLEAR_EVERY * Governor.WINDOW):
            shares.append(governor.allowed())
            clock[0] += 0.001
            governor.note(clock[0], True)
        assert shares.count(1) == Governor.PROBES  # one window of CLEAR_EVERY probes
        self.run_windows(governor, one=950, two=1000, n=4, clock=clock)
        assert governor.every == 1  # close again (after its next probe): every window

    def test_the_pipeline_uses_it_only_when_asked(self) -> None:
        assert Pipeline(10, 10, 0.005, 30, depth=2).governor is None
        assert Pipeline(10, 10, 0.005, 30, depth=1, adaptive=True).governor is None
        assert Pipeline(10, 10, 0.005, 30, depth=2, adaptive=True).governor is not None
