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
    """A value for every ClaimedItem field, each different from the others (a swap of two
    fields changes the result)."""
    return (
        7, uuid.uuid4(), "order.placed", "orders", "shop", MappingProxyType({"n": 1}),
        MappingProxyType({"m": 2}), 2, 5, 60, 2.5, 3, "corr", ("a",),
        datetime(2026, 11, 30, 1, 0, tzinfo=UTC), datetime(2026, 11, 30, 2, 0, tzinfo=UTC),
        "w-1", datetime(2026, 11, 30, 3, 0, tzinfo=UTC), uuid.uuid4(),
    )  # fmt: skip


def test_builds_what_init_builds() -> None:
    values = _values()
    built = builder(ClaimedItem)(*values)
    assert type(built) is ClaimedItem
    assert built == ClaimedItem(*values)  # type: ignore[arg-type]
    assert repr(built) == repr(ClaimedItem(*values))  # type: ignore[arg-type]
    assert built.attempt == 3  # properties of the class work
    plain = builder(ClaimedItem)(*values[:5], {"n": 1}, {"m": 2}, *values[7:])  # picklable
    assert pickle.loads(pickle.dumps(plain)) == plain


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


def test_the_hot_paths_build_what_keywords_build() -> None:
    """claimed_item and job_for pass the fields positionally: each lands in its own field
    (the same object as one built by keyword through the frozen __init__)."""
    values = _values()
    names = [field.name for field in dataclasses.fields(ClaimedItem)]
    item = claimed_item((None, *values), 1)
    assert type(item) is ClaimedItem
    assert item == ClaimedItem(**dict(zip(names, values, strict=True)))  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        item.id = 8  # type: ignore[misc]

    def extend() -> bool:
        return True

    job = job_for(item, extend)
    assert type(job) is Job
    assert job == Job(
        id=item.id,
        event_id=item.event_id,
        event_type=item.event_type,
        event_data=item.event_data,
        metadata=item.event_metadata or {},
        channel_name=item.channel_name,
        plugin_name=item.plugin_name,
        correlation_id=item.correlation_id,
        tags=item.tags,
        attempt=item.attempt,
        max_retries=item.max_retries,
        priority=item.priority,
        _extend=extend,
    )
    assert job._extend is extend and job._extend_async is None
    assert job.extend_lease() is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.priority = 9  # type: ignore[misc]
    bare = job_for(dataclasses.replace(item, event_metadata=None), extend)
    assert bare.metadata == {}


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
