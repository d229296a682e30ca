"""statements.driver_form: a statement's text and parameters as the driver takes them."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import asyncpg, psycopg

from retryqueue import statements as sql
from retryqueue.models import RetryItem
from retryqueue.statements import driver


def _flush(size: int, worker: str = "w") -> tuple[Any, dict[str, Any]]:
    return sql.complete_record_and_claim(
        None, worker, [(1, uuid.uuid4())], [5], uuid.uuid4(), size, lock_timeout=30
    )


class TestDriverForm:
    """One text per batch size, parameters in the driver's style, a bounded cache."""

    def test_the_batch_size_is_written_into_the_text(self) -> None:
        dialect = psycopg.dialect()
        for size in (1, 10, 250):
            stmt, params = _flush(size)
            text, values = sql.driver_form(stmt, dialect, params)
            assert f"LIMIT {size} " in text
            assert isinstance(values, dict) and "claim_limit" not in values
            assert values["param_1"] == "completed"  # the statement's own value, processed

    def test_positional_drivers_get_values_in_their_numbered_order(self) -> None:
        stmt, params = _flush(10, worker="the-worker")
        text, values = sql.driver_form(stmt, asyncpg.dialect(), params)
        assert isinstance(values, tuple)
        numbers = {int(n) for n in re.findall(r"\$(\d+)", text)}
        assert numbers == set(range(1, len(values) + 1))
        # the worker id is bound twice in the statement, under two names, each in place
        worker_slots = [i for i, value in enumerate(values, 1) if value == "the-worker"]
        assert len(worker_slots) == 2
        assert all(f"${slot}::VARCHAR" in text for slot in worker_slots)

    def test_the_cache_stays_bounded(self) -> None:
        dialect = psycopg.dialect()
        for size in range(1, driver._MAX_FORMS + 50):
            stmt, params = _flush(size)
            sql.driver_form(stmt, dialect, params)
        assert len(driver._FORMS) <= driver._MAX_FORMS
        stmt, params = _flush(3)
        assert "LIMIT 3 " in sql.driver_form(stmt, dialect, params)[0]

    def test_expanding_parameters_have_no_single_form(self) -> None:
        stmt = select(RetryItem.id).where(RetryItem.id.in_([1, 2, 3]))
        with pytest.raises(ValueError, match="expanding"):
            sql.driver_form(stmt, psycopg.dialect(), {})
