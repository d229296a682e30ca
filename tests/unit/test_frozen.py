"""The fast builder of frozen dataclasses: what it builds is what ``__init__`` builds."""

from __future__ import annotations

import dataclasses
import pickle
import uuid
from datetime import UTC, datetime
from types import MappingProxyType

import pytest

from retryqueue._frozen import builder
from retryqueue._rows import claimed_item
from retryqueue.results import ClaimedItem
from retryqueue.worker._attempts import Job, job_for


def _values() -> tuple[object, ...]:
    now = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
    return (
        7, uuid.uuid4(), "order.placed", "orders", "shop", MappingProxyType({"n": 1}),
        None, 2, 5, 60, 2.0, 3, "corr", ("a",), now, now, "w-1", now, uuid.uuid4(),
    )  # fmt: skip


def test_builds_what_init_builds() -> None:
    values = _values()
    built = builder(ClaimedItem)(*values)
    assert type(built) is ClaimedItem
    assert built == ClaimedItem(*values)  # type: ignore[arg-type]
    assert repr(built) == repr(ClaimedItem(*values))  # type: ignore[arg-type]
    assert built.attempt == 3  # properties of the class work
    assert pickle.loads(pickle.dumps(dataclasses.replace(built, event_data={}))) == (
        dataclasses.replace(built, event_data={})
    )


def test_built_instances_stay_frozen() -> None:
    values = _values()
    built, made = builder(ClaimedItem)(*values), ClaimedItem(*values)  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.lease_token = uuid.uuid4()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del built.event_data
    for instance in (built, made):  # no new attribute either, refused alike
        with pytest.raises((AttributeError, TypeError)) as refused:
            instance.extra = 1  # type: ignore[attr-defined]
        assert str(refused.value)
    assert built == made


def test_the_hot_paths_build_frozen_items_and_jobs() -> None:
    row = (None, *_values())
    item = claimed_item(row, 1)
    assert type(item) is ClaimedItem
    with pytest.raises(dataclasses.FrozenInstanceError):
        item.id = 8  # type: ignore[misc]
    job = job_for(item, lambda: True)
    assert type(job) is Job
    assert (job.id, job.event_type, job.attempt, job.tags) == (7, "order.placed", 3, ("a",))
    assert job.metadata == {} and job.extend_lease() is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.priority = 9  # type: ignore[misc]


@dataclasses.dataclass(frozen=True)
class _NoSlots:
    a: int


@dataclasses.dataclass(slots=True)
class _NotFrozen:
    a: int


@dataclasses.dataclass(frozen=True, slots=True)
class _Checked:
    a: int

    def __post_init__(self) -> None:
        if self.a < 0:
            raise ValueError("negative")


@dataclasses.dataclass(frozen=True, slots=True)
class _NotAllInit:
    a: int
    b: int = dataclasses.field(init=False, default=0)


@pytest.mark.parametrize("cls", [_NoSlots, _NotFrozen, _Checked, _NotAllInit, dict])
def test_refuses_what_it_cannot_build_faithfully(cls: type) -> None:
    with pytest.raises(TypeError):
        builder(cls)
