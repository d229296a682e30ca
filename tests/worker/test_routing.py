"""Routing, failure classification and load_router: pure Python, no database."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from retryqueue import InvalidArgument, RetryPolicy
from retryqueue.policy import Outcome
from retryqueue.worker import PermanentError, RetryLater, Router, load_router
from retryqueue.worker.failures import NO_HANDLER, plan_failure
from retryqueue.worker.routing import RoutePolicy
from tests.support.items import claimed


def handler_a(job: Any) -> None:
    """A handler."""


def handler_b(job: Any) -> None:
    """Another handler."""


class TestRouter:
    """The most specific route wins; nothing matches means None."""

    def test_exact_beats_pattern_and_longest_pattern_wins(self) -> None:
        router = Router({"payment.*": handler_a, "payment.card.*": handler_b})
        router.add("payment.capture", handler_b)
        assert router.resolve("payment.capture").handler is handler_b  # type: ignore[union-attr]
        assert router.resolve("payment.card.refund").pattern == "payment.card.*"  # type: ignore[union-attr]
        assert router.resolve("payment.refund").pattern == "payment.*"  # type: ignore[union-attr]
        assert router.resolve("payment") is None
        assert router.resolve("shipping.create") is None

    def test_catch_all_matches_anything_but_loses_to_any_other_route(self) -> None:
        router = Router({"*": handler_a, "a.*": handler_b})
        assert router.resolve("zzz").handler is handler_a  # type: ignore[union-attr]
        assert router.resolve("a.b").handler is handler_b  # type: ignore[union-attr]

    def test_plugin_routes_apply_only_to_their_plugin_and_come_first(self) -> None:
        router = Router()
        router.add("chat.message", handler_a)
        router.add("chat.*", handler_b, plugin_name="sql")
        assert router.resolve("chat.message", "sql").handler is handler_b  # type: ignore[union-attr]
        assert router.resolve("chat.message", "other").handler is handler_a  # type: ignore[union-attr]
        assert router.resolve("chat.join", None) is None

    def test_decorator_registers_and_returns_the_function(self) -> None:
        router = Router()

        @router.route("order.*", retry_on=TimeoutError, delay=5)
        def handle(job: Any) -> None:
            """Handle orders."""

        route = router.resolve("order.paid")
        assert route is not None and route.handler is handle
        assert route.retry_on == (TimeoutError,) and route.delay == 5.0
        assert len(router) == 1

    @pytest.mark.parametrize("pattern", ["", " ", "pay*", "*.capture", "a.*.b", ".*", 42])
    def test_bad_patterns_are_refused(self, pattern: Any) -> None:
        with pytest.raises(InvalidArgument):
            Router().add(pattern, handler_a)

    def test_duplicates_bad_handlers_and_bad_settings_are_refused(self) -> None:
        router = Router({"a.b": handler_a})
        with pytest.raises(InvalidArgument, match="routed twice"):
            router.add("a.b", handler_b)
        router.add("a.b", handler_b, plugin_name="p")  # another plugin: fine
        with pytest.raises(InvalidArgument):
            router.add("c.d", "not callable")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            router.add("c.d", handler_a, retry_on=ValueError("x"))  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            router.add("c.d", handler_a, jitter=2)
        with pytest.raises(InvalidArgument):
            router.add("c.d", handler_a, multiplier=0.5)


class TestFailurePlans:
    """How a handler's exception becomes the arguments of RetryQueue.fail."""

    base = RetryPolicy()

    def test_success_needs_no_plan(self) -> None:
        route = Router({"a.b": handler_a}).resolve("a.b")
        assert plan_failure(claimed("a.b"), route, None, self.base) is None

    def test_no_route_is_a_permanent_no_handler_failure(self) -> None:
        plan = plan_failure(claimed("x.y", plugin_name="sql"), None, None, self.base)
        assert plan is not None
        assert (plan.code, plan.retryable, plan.decision.outcome) == (
            NO_HANDLER,
            False,
            Outcome.FAILED,
        )
        assert "'x.y'" in plan.message and "'sql'" in plan.message

    def test_codes_come_from_the_code_attribute_else_the_class_name(self) -> None:
        route = Router({"a.b": handler_a}).resolve("a.b")

        class Http503(Exception):
            code = 503

        class AVeryLongExceptionClassNameThatGoesOnAndOnBeyondFiftyCharacters(Exception):
            pass

        assert plan_failure(claimed(), route, Http503("down"), self.base).code == "503"  # type: ignore[union-attr]
        assert plan_failure(claimed(), route, KeyError("k"), self.base).code == "KeyError"  # type: ignore[union-attr]
        long = plan_failure(
            claimed(),
            route,
            AVeryLongExceptionClassNameThatGoesOnAndOnBeyondFiftyCharacters(),
            self.base,
        )
        name = AVeryLongExceptionClassNameThatGoesOnAndOnBeyondFiftyCharacters.__name__
        assert long is not None and long.code == name[:47] + "..." and len(long.code) == 50
        assert long.message == name

    def test_nul_characters_never_reach_the_database(self) -> None:
        route = Router({"a.b": handler_a}).resolve("a.b")
        plan = plan_failure(claimed(), route, ValueError("bad\x00byte"), self.base)
        assert plan is not None and "\x00" not in plan.message

    def test_permanent_error_and_unlisted_exceptions_fail_at_once(self) -> None:
        router = Router()
        router.add("a.b", handler_a, retry_on=(TimeoutError,))
        route = router.resolve("a.b")
        permanent = plan_failure(claimed("a.b"), route, PermanentError("no", code="BAD"), self.base)
        unlisted = plan_failure(claimed("a.b"), route, ValueError("v"), self.base)
        listed = plan_failure(claimed("a.b"), route, TimeoutError("t"), self.base)
        assert permanent is not None and unlisted is not None and listed is not None
        assert (permanent.code, permanent.decision.outcome) == ("BAD", Outcome.FAILED)
        assert unlisted.decision.outcome is Outcome.FAILED
        assert listed.decision.outcome is Outcome.RETRY_SCHEDULED

    def test_retry_later_uses_its_delay_and_still_dead_letters_at_the_limit(self) -> None:
        route = Router({"a.b": handler_a}).resolve("a.b")
        plan = plan_failure(claimed(), route, RetryLater(timedelta(minutes=2)), self.base)
        assert plan is not None and plan.retry_after == 120.0
        assert plan.decision.delay == timedelta(minutes=2)
        last = plan_failure(claimed(retry_count=3), route, RetryLater(1), self.base)
        assert last is not None and last.decision.outcome is Outcome.DEAD_LETTERED
        with pytest.raises(ValueError, match=">= 0"):
            RetryLater(-1)

    def test_route_backoff_overrides_the_items_and_keeps_the_queues_cap(self) -> None:
        router = Router()
        router.add("a.b", handler_a, delay=10, multiplier=3)
        route = router.resolve("a.b")
        assert route is not None
        base = RetryPolicy(max_delay=timedelta(seconds=50))
        policy = route.policy(base)
        assert isinstance(policy, RoutePolicy)
        assert [policy.delay(n, 60, 2.0).total_seconds() for n in range(3)] == [10, 30, 50]
        assert Router({"x.y": handler_a}).resolve("x.y").policy(base) is None  # type: ignore[union-attr]


class TestLoadRouter:
    """'module:attribute' specs, as the CLI passes them."""

    @pytest.fixture
    def module(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
        name = f"rq_handlers_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(
            "from retryqueue.worker import Router\n"
            "def capture(job): pass\n"
            "router = Router({'payment.capture': capture})\n"
            "handlers = {'a.b': capture}\n"
            "def make(): return {'made.by': capture}\n"
            "number = 42\n"
        )
        monkeypatch.syspath_prepend(str(tmp_path))
        return name

    def test_router_mapping_factory_and_default_attribute(self, module: str) -> None:
        assert load_router(f"{module}:router").resolve("payment.capture") is not None
        assert load_router(f"{module}:handlers").resolve("a.b") is not None
        assert load_router(f"{module}:make").resolve("made.by") is not None
        assert load_router(module).resolve("payment.capture") is not None

    def test_a_plain_handler_serves_every_event_type(self, module: str) -> None:
        router = load_router(f"{module}:capture")  # not called as a factory
        route = router.resolve("any.event.type")
        assert route is not None and route.pattern == "*"

    @pytest.mark.parametrize(
        ("spec", "message"),
        [
            ("", "expected"),
            ("{m}:", "expected"),
            ("{m}:missing", "no attribute 'missing'"),
            ("{m}:number", "is a int"),
            ("no_such_module_rq:router", "cannot import"),
        ],
    )
    def test_bad_specs_raise_invalid_argument(self, module: str, spec: str, message: str) -> None:
        with pytest.raises(InvalidArgument, match=message):
            load_router(spec.format(m=module))
