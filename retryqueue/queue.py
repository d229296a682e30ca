"""RetryQueue: the queue's operations on the caller's Session.

Every method takes the application's :class:`~sqlalchemy.orm.Session` and never commits:
the caller owns the transaction (the worker and the CLI commit their own). Statements come
from :mod:`retryqueue.statements`; failure decisions from :mod:`retryqueue.policy`.

The statements bypass the Session's identity map (``synchronize_session=False``): if your
Session holds :class:`~retryqueue.models.RetryItem` objects, expire them after a call.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import (
    Callable,
    Collection,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from retryqueue import encryption, hooks, monitoring
from retryqueue import statements as sql
from retryqueue import validation as check
from retryqueue._rows import (
    TRACEBACK_LIMIT,
    NewItem,
    claimed_item,
    failure_forensics,
    history_row,
    item_row,
    lease_of,
    required_token,
    valid_ids,
)
from retryqueue.clock import Clock, SystemClock
from retryqueue.errors import EnqueueRaceError, InvalidArgument, RetryQueueError, database_error
from retryqueue.fingerprint import fingerprint
from retryqueue.models import TERMINAL_STATUSES, WORKER_DEAD_AFTER_SECONDS, RetryStatus
from retryqueue.policy import (
    DEADLINE_REACHED,
    EXPIRED,
    EXPIRED_UNRUN,
    MAX_DELAY_SECONDS,
    RETRY_PAST_EXPIRY,
    Decision,
    Outcome,
    RetryPolicy,
    within_deadline,
)
from retryqueue.results import (
    Alert,
    ClaimedItem,
    CleanupResult,
    DeadLetterGroup,
    EnqueuedItem,
    ErrorGroup,
    HistoryEntry,
    HourlyCount,
    ItemFilter,
    ItemSnapshot,
    QueueStats,
    SuccessRate,
)

__all__ = [
    "NOTIFY_CHANNEL",
    "TRACEBACK_LIMIT",
    "UNDECRYPTABLE",
    "NewItem",
    "RetryQueue",
    "listen_statement",
]

NOTIFY_CHANNEL = sql.NOTIFY_CHANNEL
UNDECRYPTABLE = "UNDECRYPTABLE"
"""The error code of an item quarantined because its event_data cannot be decrypted."""

logger = logging.getLogger("retryqueue.queue")


def listen_statement(channel: str = NOTIFY_CHANNEL) -> Any:
    """The LISTEN statement a worker runs on its wake-up connection (PostgreSQL)."""
    return sql.listen(channel)


P = ParamSpec("P")
R = TypeVar("R")

_SERVER_CLOCK_DIALECTS = frozenset({"postgresql", "mysql", "mariadb"})
_STALE_RECLAIM_LIMIT = 1000
# How often enqueue re-inserts an event_id whose holder vanished before its id was read.
_VANISHED_RETRIES = 3


def _database_errors(method: Callable[P, R]) -> Callable[P, R]:
    """Re-raise SQLAlchemy errors as :class:`DatabaseError`, keeping the cause."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except RetryQueueError:
            raise
        except SQLAlchemyError as exc:
            raise database_error(method.__name__, exc) from exc

    return wrapper


class RetryQueue:
    """A persistent retry queue over ``daz_retry_queue`` and ``daz_retry_history``.

    :param clock: where "now" comes from. Default: the database server's clock on
        PostgreSQL/MySQL (immune to skewed worker hosts), the host clock on SQLite.
        Inject a :class:`~retryqueue.clock.ManualClock` in tests.
    :param policy: backoff cap and jitter applied to failures.
    :param max_payload_bytes: largest event_data accepted, as UTF-8 JSON (default 1 MiB).
    :param default_ttl: how long a new or requeued item may wait before it expires.
    :param notify: on PostgreSQL, send ``NOTIFY retryqueue`` with every enqueue (delivered
        when the enqueuing transaction commits), so idle workers wake at once.
    :param count_expired_locks: whether an attempt whose lock expired (its worker crashed
        or hung) counts toward max_retries. Default True, so a poison item that kills its
        worker every time ends in dead_letter instead of looping forever.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        policy: RetryPolicy | None = None,
        max_payload_bytes: int = check.DEFAULT_MAX_PAYLOAD_BYTES,
        default_ttl: timedelta = timedelta(days=7),
        count_expired_locks: bool = True,
        notify: bool = True,
    ) -> None:
        self.clock = clock
        self.policy = policy or RetryPolicy()
        self.max_payload_bytes = check.bounded_int("max_payload_bytes", max_payload_bytes, low=1)
        self.default_ttl = timedelta(seconds=check.seconds("default_ttl", default_ttl))
        self.count_expired_locks = count_expired_locks
        self.notify = notify

    def __repr__(self) -> str:
        return f"RetryQueue(clock={self.clock!r}, policy={self.policy!r})"

    # -- time ----------------------------------------------------------------------------

    def now(self, session: Session) -> datetime | None:
        """The operation's "now": a datetime, or None to use the database server's clock."""
        if self.clock is not None:
            return self.clock.now()
        if session.get_bind().dialect.name in _SERVER_CLOCK_DIALECTS:
            return None  # the database server's clock
        return SystemClock().now()

    def calculate_next_retry(
        self,
        retry_count: int,
        retry_delay_seconds: float = 60,
        backoff_multiplier: float = 2.0,
    ) -> timedelta:
        """The backoff delay after ``retry_count`` earlier retries, under this queue's policy.

        With the defaults: 60 s, 120 s, 240 s, 480 s for retry_count 0, 1, 2, 3.
        """
        return self.policy.delay(retry_count, retry_delay_seconds, backoff_multiplier)

    # -- enqueue -------------------------------------------------------------------------

    def enqueue(
        self, session: Session, /, event_type: str, event_data: Any, **fields: Any
    ) -> EnqueuedItem:
        """Add one item; every column is settable through keyword arguments.

        Keywords: ``channel_name``, ``plugin_name``, ``event_metadata``, ``max_retries``,
        ``retry_delay_seconds``, ``backoff_multiplier``, ``priority`` (1..10, 10 first),
        ``correlation_id``, ``tags``, ``event_id``, ``run_at`` or ``delay`` (when it is first
        due; default now), ``expires_at`` or ``ttl`` (default now + 7 days), ``deadline``
        (aware datetime) or ``retry_for`` (seconds from now): no retry is scheduled after
        it (docs/retries.md).

        Idempotent on ``event_id``: enqueueing an existing event_id changes nothing and
        returns the existing row with ``created=False``. Invalid input raises
        :class:`~retryqueue.errors.InvalidArgument` before anything is written.
        """
        unknown = set(fields) - set(NewItem.__dataclass_fields__)
        if unknown:
            raise InvalidArgument(", ".join(sorted(unknown)), "unknown enqueue argument")
        return self.enqueue_many(session, [NewItem(event_type, event_data, **fields)])[0]

    @_database_errors
    def enqueue_many(self, session: Session, items: Iterable[NewItem]) -> list[EnqueuedItem]:
        """Add many items in bulk INSERTs; results are in input order.

        Every item is validated before any row is written. On PostgreSQL with psycopg 3
        (sync) 50 rows or more go by COPY into a temporary staging table on the session's
        connection, inside the caller's transaction, then one ``INSERT … SELECT … ON
        CONFLICT DO NOTHING``; with other PostgreSQL drivers they travel as one JSON
        parameter per 1,000 rows (or ~8 MiB); elsewhere as a multi-row VALUES.
        """
        at = self.now(session)
        rows = [
            item_row(
                index,
                item,
                at,
                max_payload_bytes=self.max_payload_bytes,
                default_ttl=self.default_ttl,
            )
            for index, item in enumerate(items)
        ]
        if not rows:
            return []
        hook = hooks.active  # instrumentation seam (retryqueue.hooks)
        if hook is not None:
            with hook.enqueue(rows):
                return self._insert_rows(session, at, rows)
        return self._insert_rows(session, at, rows)

    def _insert_rows(
        self, session: Session, at: datetime | None, rows: list[dict[str, Any]]
    ) -> list[EnqueuedItem]:
        dialect = session.get_bind().dialect.name
        inserted = self._insert(session, at, rows, targeted=False)
        ids = {**self._existing(session, rows, inserted), **inserted}
        for _ in range(_VANISHED_RETRIES):
            # Skipped as taken, yet no row holds it: the holder was purged or cleaned up
            # between our INSERT and the look-up (or, on PostgreSQL, the row hit another
            # unique index: the targeted retry raises for that one instead).
            vanished: dict[uuid.UUID, dict[str, Any]] = {}
            for row in rows:
                if row["event_id"] not in ids:
                    vanished.setdefault(row["event_id"], row)  # the first mention, as before
            if not vanished:
                break
            again = list(vanished.values())
            retried = self._insert(session, at, again, targeted=True)
            inserted.update(retried)
            ids.update(retried)
            ids.update(self._existing(session, again, ids))
        else:
            missing = next(row["event_id"] for row in rows if row["event_id"] not in ids)
            raise EnqueueRaceError(missing, _VANISHED_RETRIES)
        if inserted and self.notify and dialect == "postgresql":
            session.execute(sql.notify())
        results, reported = [], set()
        for row in rows:
            event_id = row["event_id"]
            # The first mention of a newly inserted event_id created it; repeats did not.
            created = event_id in inserted and event_id not in reported
            reported.add(event_id)
            results.append(EnqueuedItem(ids[event_id], event_id, created))
        return results

    def _insert(
        self,
        session: Session,
        at: datetime | None,
        rows: list[dict[str, Any]],
        *,
        targeted: bool,
    ) -> dict[uuid.UUID, int]:
        """Insert the rows, skipping taken event_ids; the ids of those inserted.

        ``targeted`` (PostgreSQL): the rare retry, which names the conflict it expects
        (event_id on the plain table; on the partitioned one the trigger does), so that any
        other conflict raises instead of being skipped.
        """
        bind_dialect = session.get_bind().dialect
        dialect = bind_dialect.name
        if dialect == "postgresql" and not targeted and len(rows) >= _COPY_FROM_ROWS:
            copier = _psycopg_connection(session)
            if copier is not None:  # psycopg 3, sync: COPY through a staging table
                return _insert_by_copy(session, copier, rows, at is None)
        if dialect == "postgresql":
            target: bool | None = False
            if targeted:
                from retryqueue.migrations import partitioning  # brings alembic: rare path

                target = None if partitioning.is_partitioned(session.connection()) else True
            insert_json = sql.insert_items_json(at is None, target)
            inserted: dict[uuid.UUID, int] = {}
            for payload in sql.json_payloads(rows, bind_dialect):
                inserted.update(
                    (event_id, item_id)
                    for item_id, event_id in session.execute(insert_json, {"rows": payload})
                )
            return inserted
        if sql.has_returning(dialect):
            return {
                event_id: item_id
                for item_id, event_id in session.execute(sql.insert_items(dialect, at), rows)
            }
        return self._insert_without_returning(session, dialect, at, rows)

    @staticmethod
    def _existing(
        session: Session, rows: list[dict[str, Any]], known: Mapping[uuid.UUID, int]
    ) -> dict[uuid.UUID, int]:
        """The ids of the rows already holding the event_ids that ``known`` lacks."""
        missing = list({row["event_id"] for row in rows if row["event_id"] not in known})
        if not missing:
            return {}
        stmt = sql.existing_by_event_ids(missing)
        return {event_id: item_id for item_id, event_id in session.execute(stmt)}

    @staticmethod
    def _insert_without_returning(
        session: Session, dialect: str, at: datetime | None, rows: list[dict[str, Any]]
    ) -> dict[uuid.UUID, int]:
        # MySQL/MariaDB: no INSERT ... RETURNING. The event_ids already present are read
        # first (a plain read: no gap locks); after the insert, a locking read (which sees
        # rows other transactions committed meanwhile) gives every id. Caveat: an event_id
        # that a concurrent transaction inserts between the two reads counts as ours.
        event_ids = list({row["event_id"] for row in rows})
        before = {event_id for _, event_id in session.execute(sql.existing_by_event_ids(event_ids))}
        session.execute(sql.insert_items(dialect, at), rows)
        return {
            event_id: item_id
            for item_id, event_id in session.execute(sql.enqueued_by_event_ids(event_ids))
            if event_id not in before
        }

    # -- acquire -------------------------------------------------------------------------

    @_database_errors
    def acquire(
        self,
        session: Session,
        worker_id: str,
        batch_size: int = 10,
        lock_timeout: float = 300,
        *,
        reclaim_stale: bool = True,
        skip_keys: Collection[str] = (),
        only_key: str | None = None,
        per_event_type: bool = False,
    ) -> list[ClaimedItem]:
        """Claim up to ``batch_size`` due items for ``worker_id``, highest priority first.

        First, items whose lock has expired — held by any worker — are reclaimed (an
        attempt with history status ``lock_expired``). Then pending, due, unexpired items
        are locked with ``FOR UPDATE SKIP LOCKED``, so concurrent workers never receive the
        same item. Each claim gets a fresh lease token and expires ``lock_timeout`` seconds
        after it is stamped (unless heartbeats extend it): a lock's expiry is its holder's,
        so workers with different lock timeouts can share a queue. Locks taken before
        revision rq0006 (no stored expiry) expire after this call's ``lock_timeout``.
        Pending items past their expiry are dead-lettered here too (code ``EXPIRED``; see
        :meth:`expire`), a bounded batch each time.

        ``reclaim_stale=False`` skips the first step (one statement fewer): a worker that
        acquires many times a second reclaims on a timer instead (see the Worker).

        Circuit breaker (see :mod:`retryqueue.circuits`): items whose circuit key is in
        ``skip_keys`` (an open circuit's) stay pending, untouched; ``only_key`` claims
        only that key's items (a half-open circuit's probe, with ``batch_size=1``). The
        key is the item's plugin_name, or ``plugin_name:event_type`` with
        ``per_event_type=True``; items without a plugin_name are never skipped.
        """
        worker_id = check.text("worker_id", worker_id)
        batch_size = check.bounded_int("batch_size", batch_size, low=1, high=10_000)
        lock_timeout = check.seconds("lock_timeout", lock_timeout, allow_zero=False)
        if isinstance(skip_keys, str):
            raise InvalidArgument("skip_keys", "expected a collection of keys, not one string")
        keys: dict[str, Any] = {  # the circuit filter of the claim
            "skip_keys": sorted(check.text("skip_keys", key, max_length=511) for key in skip_keys),
            "only_key": check.optional_text("only_key", only_key, max_length=511),
            "per_event_type": per_event_type,
        }
        keys["lock_timeout"] = lock_timeout
        at = self._locked_now(session)
        if reclaim_stale:
            self._reclaim_stale(session, at, lock_timeout)
            self._dead_letter_expired(session, at, _STALE_RECLAIM_LIMIT)
        token = uuid.uuid4()
        if _has_returning(session):
            stmt, params = sql.claim(at, worker_id, token, batch_size, **keys)
            rows = _core(session).execute(stmt, params).all()
        else:  # MySQL: SELECT ... SKIP LOCKED, UPDATE those ids, read them back
            emulation = sql.claim_emulated(at, worker_id, token, batch_size, **keys)
            rows = _run_emulated(session, emulation)
        claimed = self._quarantine([claimed_item(row) for row in rows], session, at)
        claimed.sort(key=lambda item: (-item.priority, item.next_retry_at, item.id))
        return claimed

    def _quarantine(
        self, claimed: list[ClaimedItem], session: Session, at: datetime | None
    ) -> list[ClaimedItem]:
        """Dead-letter the claimed items whose event_data cannot be decrypted; the others.

        Such an item (sealed under a key this process lacks, or tampered) can never run
        here: it is charged one attempt and ends in dead_letter with error code
        ``UNDECRYPTABLE`` and the reason in its history row, so that it neither kills the
        worker nor comes back forever. Requeue it once the right key is configured.
        """
        runnable = []
        for item in claimed:
            data = item.event_data
            if not isinstance(data, encryption.Undecryptable):
                runnable.append(item)
                continue
            message = f"quarantined: event_data cannot be decrypted ({data.reason})"
            fields = {"item_id": item.id, "worker_id": item.locked_by, "error_code": UNDECRYPTABLE}
            decision = Decision(Outcome.DEAD_LETTERED, "dead_letter", item.retry_count + 1)
            guard = sql.owned_guard(item.id, item.lease_token)
            group = fingerprint(UNDECRYPTABLE, message)
            if self._apply(
                session, guard, at, decision, message, UNDECRYPTABLE, error_fingerprint=group
            ):
                self._write_attempt(
                    session,
                    at,
                    item,
                    Outcome.DEAD_LETTERED,
                    worker_id=item.locked_by,
                    error_message=message,
                    error_code=UNDECRYPTABLE,
                    error_fingerprint=group,
                )
            logger.error(
                "item %s %s",
                item.id,
                message,
                extra=fields,
            )
        return runnable

    def _locked_now(self, session: Session) -> datetime | None:
        """ "Now" for stamping locks, read once the transaction has begun.

        On SQLite the transaction's ``BEGIN IMMEDIATE`` waits for the write lock: the
        clock is read after that wait, so a claim is never born older than the wait.
        (On the server clock, the statements stamp the statement's own time.)
        """
        session.connection()  # begins the transaction (SQLite: takes the write lock)
        return self.now(session)

    def _reclaim_stale(self, session: Session, at: datetime | None, lock_timeout: float) -> int:
        stmt = sql.select_stale(at, lock_timeout, _STALE_RECLAIM_LIMIT)
        if not _has_returning(session):
            # MySQL: a locking scan of the status index takes next-key locks that deadlock
            # with concurrent claims; find candidates with a plain read, then lock by id.
            ids = list(session.scalars(sql.stale_ids(at, lock_timeout, _STALE_RECLAIM_LIMIT)))
            if not ids:
                return 0
            stmt = sql.select_stale(at, lock_timeout, _STALE_RECLAIM_LIMIT, only_ids=ids)
        stale = session.execute(stmt).all()
        history = []
        for row in stale:
            expired: str | None = f"lock held by {row.locked_by} expired"
            code: str | None = "LOCK_EXPIRED"
            if self.count_expired_locks:
                decision = self._decide(row, retryable=True, retry_after=None, policy=None)
                decision, expired, code = _unless_past_deadline(
                    row, self.policy, decision, expired, code, False
                )
            else:
                decision = Decision(Outcome.LOCK_EXPIRED, "pending", row.retry_count, timedelta(0))
            decision, reason = _unless_past_expiry(row, decision, expired)
            message = reason or expired
            guard = sql.reclaim_stale(row.id, at, lock_timeout)
            group = fingerprint(code, message)
            if self._apply(session, guard, at, decision, message, code, error_fingerprint=group):
                history.append(
                    history_row(
                        row.id,
                        row.event_id,
                        row.retry_count + 1,
                        Outcome.LOCK_EXPIRED,
                        worker_id=row.locked_by,
                        error_message=message,
                        error_code=code,
                        error_fingerprint=group,
                    )
                )
        self._write_history(session, at, history)
        return len(history)

    @_database_errors
    def expire(self, session: Session, *, limit: int = 1000) -> int:
        """Move up to ``limit`` pending items past their ``expires_at`` to ``dead_letter``.

        Such an item can never run; instead of vanishing at the next cleanup it becomes a
        dead letter with code :data:`~retryqueue.policy.EXPIRED` and an ``expired``
        history row, so that stats, alerts, metrics and dead-letter triage show it, and
        ``replay`` can bring it back with a new expiry. Workers do this on their stale-lock
        timer and :meth:`cleanup` before deleting anything. Returns how many moved.
        """
        limit = check.bounded_int("limit", limit, low=1, high=100_000)
        return self._dead_letter_expired(session, self.now(session), limit)

    def _dead_letter_expired(self, session: Session, at: datetime | None, limit: int) -> int:
        stmt = sql.lock_expired(at, limit)
        if not _has_returning(session):
            # MySQL: as for stale locks, find candidates by a plain read, then lock by id.
            ids = list(session.scalars(sql.expired_ids(at, limit)))
            if not ids:
                return 0
            stmt = sql.lock_expired(at, limit, only_ids=ids)
        rows = session.execute(stmt).all()
        if not rows:
            return 0
        group = fingerprint(EXPIRED, EXPIRED_UNRUN)
        session.execute(
            sql.dead_letter_expired(
                [row.id for row in rows],
                at,
                error_code=EXPIRED,
                message=EXPIRED_UNRUN,
                error_fingerprint=group,
            )
        )
        self._write_history(
            session,
            at,
            [
                history_row(
                    row.id,
                    row.event_id,
                    row.retry_count,
                    "expired",
                    error_message=EXPIRED_UNRUN,
                    error_code=EXPIRED,
                    error_fingerprint=group,
                )
                for row in rows
            ],
        )
        return len(rows)

    # -- outcomes ------------------------------------------------------------------------

    @_database_errors
    def complete(
        self,
        session: Session,
        item: ClaimedItem | int,
        worker_id: str | None = None,
        *,
        lease_token: uuid.UUID | None = None,
        duration_ms: int | None = None,
        force: bool = False,
    ) -> bool:
        """Mark an item completed. Only its lease holder can, and only while processing.

        Pass the :class:`ClaimedItem` from :meth:`acquire`, or an id with ``worker_id`` and
        ``lease_token`` (required: the lease is the only key). Returns False, changing
        nothing, if the lease was lost: the lock expired and someone acquired it again —
        even a worker with the same worker id.

        ``force=True`` is the operator's path (``retryqueue complete ID``): the item, given
        by id, is completed whatever its lease, if it is pending or processing;
        ``worker_id`` is then only recorded as who did it. A worker still running it is
        refused its outcome later.
        """
        item_id, actor, token = lease_of(item, worker_id, lease_token, force=force)
        duration_ms = check.optional_duration_ms("duration_ms", duration_ms)
        at = self.now(session)
        done = _returning_rows(session, sql.complete_owned(at, _guard(item_id, token)))
        row = done[0] if done else None
        if (hook := hooks.active) is not None and isinstance(item, ClaimedItem):
            hook.outcome(item, Outcome.COMPLETED.value if row else "lost", None)
        if row is None:
            return False
        self._write_attempt(
            session, at, row, Outcome.COMPLETED, worker_id=actor, duration_ms=duration_ms
        )
        return True

    @_database_errors
    def complete_many(
        self,
        session: Session,
        items: Sequence[ClaimedItem],
        *,
        durations_ms: Sequence[int | None] | None = None,
    ) -> set[int]:
        """Complete many claimed items of one worker in one UPDATE and one history INSERT.

        Returns the ids completed; an item missing from the answer had lost its lease and
        was left alone.
        """
        completed = self._complete_many(session, items, durations_ms)
        if (hook := hooks.active) is not None:
            for item in items:
                hook.outcome(
                    item, Outcome.COMPLETED.value if item.id in completed else "lost", None
                )
        return completed

    def _complete_many(
        self,
        session: Session,
        items: Sequence[ClaimedItem],
        durations_ms: Sequence[int | None] | None,
    ) -> set[int]:
        if not items:
            return set()
        if durations_ms is not None:
            if len(durations_ms) != len(items):
                raise InvalidArgument("durations_ms", "needs one entry per item")
            durations_ms = [check.optional_duration_ms("durations_ms", ms) for ms in durations_ms]
        workers = {item.locked_by for item in items}
        if len(workers) != 1:
            raise InvalidArgument("items", "must all be claimed by the same worker")
        worker_id = workers.pop()
        at = self.now(session)
        leases = [(item.id, required_token(item.lease_token)) for item in items]
        if session.get_bind().dialect.name == "postgresql":  # both writes in one statement
            durations = list(durations_ms) if durations_ms is not None else [None] * len(items)
            recorded, values = sql.complete_and_record(at, worker_id, leases, durations)
            return set(_core(session).execute(recorded, values).scalars())
        stmt, params = sql.complete_many(at, leases)
        rows = _returning_rows(session, stmt, params)
        duration_of = dict(zip((item.id for item in items), durations_ms or [], strict=False))
        self._write_history(
            session,
            at,
            [
                history_row(
                    row.id,
                    row.event_id,
                    row.retry_count + 1,
                    Outcome.COMPLETED,
                    worker_id=worker_id,
                    duration_ms=duration_of.get(row.id),
                )
                for row in rows
            ],
        )
        return {row.id for row in rows}

    def complete_and_acquire(
        self,
        session: Session,
        items: Sequence[ClaimedItem],
        worker_id: str,
        batch_size: int = 10,
        lock_timeout: float = 300,
        *,
        durations_ms: Sequence[int | None] | None = None,
        reclaim_stale: bool = True,
    ) -> tuple[set[int], list[ClaimedItem]]:
        """:meth:`complete_many` then :meth:`acquire` (no circuit filter), for a worker
        whose flush completes a batch and claims the next: one statement on PostgreSQL when
        no stale-lock sweep is due, else the two calls. Returns (ids completed, claimed).
        """
        if not items or reclaim_stale or session.get_bind().dialect.name != "postgresql":
            completed = self.complete_many(session, items, durations_ms=durations_ms)
            claimed = self.acquire(
                session, worker_id, batch_size, lock_timeout, reclaim_stale=reclaim_stale
            )
            return completed, claimed
        completed, claimed = self._complete_and_claim(
            session, items, worker_id, batch_size, lock_timeout, durations_ms
        )
        if (hook := hooks.active) is not None:
            for item in items:
                hook.outcome(
                    item, Outcome.COMPLETED.value if item.id in completed else "lost", None
                )
        return completed, claimed

    @_database_errors
    def _complete_and_claim(
        self,
        session: Session,
        items: Sequence[ClaimedItem],
        worker_id: str,
        batch_size: int,
        lock_timeout: float,
        durations_ms: Sequence[int | None] | None,
    ) -> tuple[set[int], list[ClaimedItem]]:
        worker_id = check.text("worker_id", worker_id)
        batch_size = check.bounded_int("batch_size", batch_size, low=1, high=10_000)
        lock_timeout = check.seconds("lock_timeout", lock_timeout, allow_zero=False)
        durations_ms = (
            None
            if durations_ms is None
            else [check.optional_duration_ms("durations_ms", ms) for ms in durations_ms]
        )
        if durations_ms is not None and len(durations_ms) != len(items):
            raise InvalidArgument("durations_ms", "needs one entry per item")
        if any(item.locked_by != worker_id for item in items):
            raise InvalidArgument("items", "must all be claimed by this worker")
        leases = [(item.id, required_token(item.lease_token)) for item in items]
        durations = list(durations_ms) if durations_ms is not None else [None] * len(items)
        at = self.now(session)
        stmt, params = sql.complete_record_and_claim(
            at,
            worker_id,
            leases,
            durations,
            uuid.uuid4(),
            batch_size,
            lock_timeout=lock_timeout,
        )
        rows = _core(session).execute(stmt, params).all()
        completed = set(rows[0].completed_ids or ())
        claimed = [claimed_item(row) for row in rows if row.id is not None]
        claimed.sort(key=lambda item: (-item.priority, item.next_retry_at, item.id))
        if any(isinstance(item.event_data, encryption.Undecryptable) for item in claimed):
            with _atomic(session):  # rare: a worker's flush may run autocommitted
                claimed = self._quarantine(claimed, session, at)
        return completed, claimed

    @_database_errors
    def seconds_until_due(self, session: Session) -> float | None:
        """Seconds until the earliest pending item is due (<= 0: due now); None if none."""
        row = session.execute(sql.next_due(self.now(session))).one()
        if row.next_due is None:
            return None
        return float((row.next_due - row.now).total_seconds())

    def fail(
        self,
        session: Session,
        item: ClaimedItem | int,
        worker_id: str | None = None,
        error_message: str | None = None,
        error_code: str | None = None,
        *,
        lease_token: uuid.UUID | None = None,
        retryable: bool = True,
        retry_after: float | timedelta | None = None,
        duration_ms: int | None = None,
        policy: RetryPolicy | None = None,
        force: bool = False,
        exception_type: str | None = None,
        error_traceback: str | None = None,
    ) -> bool:
        """Record a failed attempt; the lease holder only, as for :meth:`complete`.

        Retryable failures go back to pending with retry_count + 1, due after the backoff
        delay (or ``retry_after``), until retry_count has reached max_retries: then the item
        is dead-lettered. A retry that would fall after the item's ``expires_at`` is not
        scheduled: the item is dead-lettered at once, and its message says so (see
        :data:`~retryqueue.policy.RETRY_PAST_EXPIRY`). Likewise past the item's
        ``retry_deadline`` (or the policy's ``retry_for`` from ``created_at``): a backoff
        retry is moved up to the deadline while time is left, else the item is
        dead-lettered with code :data:`~retryqueue.policy.DEADLINE_REACHED`.
        ``retryable=False`` marks it ``failed`` at once. ``retry_after`` is at most 10 years
        (:data:`~retryqueue.policy.MAX_DELAY_SECONDS`). Returns False, changing nothing, if
        the lease was lost. ``force=True``: the operator's path, as for :meth:`complete`
        (``retryqueue fail ID``).

        The attempt's history row keeps ``exception_type`` (at most 255 characters) and
        ``error_traceback`` (its last :data:`TRACEBACK_LIMIT` characters), and both the item
        and the history row get the failure's :func:`~retryqueue.fingerprint.fingerprint`.
        """
        return (
            self.record_failure(
                session,
                item,
                worker_id,
                error_message,
                error_code,
                lease_token=lease_token,
                retryable=retryable,
                retry_after=retry_after,
                duration_ms=duration_ms,
                policy=policy,
                force=force,
                exception_type=exception_type,
                error_traceback=error_traceback,
            )
            is not None
        )

    @_database_errors
    def record_failure(
        self,
        session: Session,
        item: ClaimedItem | int,
        worker_id: str | None = None,
        error_message: str | None = None,
        error_code: str | None = None,
        *,
        lease_token: uuid.UUID | None = None,
        retryable: bool = True,
        retry_after: float | timedelta | None = None,
        duration_ms: int | None = None,
        policy: RetryPolicy | None = None,
        force: bool = False,
        exception_type: str | None = None,
        error_traceback: str | None = None,
    ) -> Outcome | None:
        """:meth:`fail`, returning what became of the attempt (None: the lease was lost).

        The outcome is the one recorded under the row lock, e.g. ``DEAD_LETTERED`` for a
        retry that would fall after the item's expiry.
        """
        item_id, actor, token = lease_of(item, worker_id, lease_token, force=force)
        if error_message is not None and not isinstance(error_message, str):
            raise InvalidArgument("error_message", "expected a string")
        if error_message is not None:
            check.text("error_message", error_message, max_length=1_000_000)
        error_code = check.optional_text("error_code", error_code, max_length=50)
        retryable = check.flag("retryable", retryable)
        duration_ms = check.optional_duration_ms("duration_ms", duration_ms)
        forensics = failure_forensics(error_code, error_message, exception_type, error_traceback)
        wait = (
            None
            if retry_after is None
            else timedelta(seconds=check.seconds("retry_after", retry_after))
        )
        at = self.now(session)
        guard = _guard(item_id, token)
        row = session.execute(sql.lock_owned(guard, at=at)).first()
        decision: Decision | None = None
        if row is not None:
            decision = self._decide(row, retryable=retryable, retry_after=wait, policy=policy)
            decision, error_message, error_code = _unless_past_deadline(
                row, policy or self.policy, decision, error_message, error_code, wait is not None
            )
            decision, error_message = _unless_past_expiry(row, decision, error_message)
            # The group of what is stored: a refused retry's code and message are rewritten.
            forensics["error_fingerprint"] = fingerprint(error_code, error_message)
        applied = decision is not None and self._apply(
            session,
            guard,
            at,
            decision,
            error_message,
            error_code,
            error_fingerprint=forensics["error_fingerprint"],
        )
        if (hook := hooks.active) is not None and isinstance(item, ClaimedItem):
            self._traced_failure(session, hook, item, decision if applied else None)
        if not applied or decision is None:
            return None
        self._write_attempt(
            session,
            at,
            row,
            decision.outcome,
            worker_id=actor,
            error_message=error_message,
            error_code=error_code,
            duration_ms=duration_ms,
            **forensics,
        )
        return decision.outcome

    @staticmethod
    def _traced_failure(
        session: Session, hook: hooks.Instrumentation, item: ClaimedItem, decision: Decision | None
    ) -> None:
        """Tell the instrumentation about a failure (None: refused); store what it returns."""
        if decision is None:
            hook.outcome(item, "lost", None)
            return
        extra = hook.outcome(item, decision.outcome.value, decision.delay)
        if extra:
            merged = _merged(item.event_metadata, extra)
            session.execute(sql.set_metadata(), [{"item_id": item.id, "new_metadata": merged}])

    def _decide(
        self,
        row: Any,
        *,
        retryable: bool,
        retry_after: timedelta | None,
        policy: RetryPolicy | None,
    ) -> Decision:
        return (policy or self.policy).decide(
            retry_count=row.retry_count,
            max_retries=row.max_retries,
            retry_delay_seconds=row.retry_delay_seconds,
            backoff_multiplier=float(row.backoff_multiplier),
            retryable=retryable,
            retry_after=retry_after,
        )

    @staticmethod
    def _apply(
        session: Session,
        guard: Any,
        at: datetime | None,
        decision: Decision,
        error_message: str | None,
        error_code: str | None,
        *,
        error_fingerprint: str | None = None,
    ) -> bool:
        stmt = sql.apply_failure(
            guard,
            at,
            status=decision.status,
            retry_count=decision.retry_count,
            delay=decision.delay,
            error_message=error_message,
            error_code=error_code,
            error_fingerprint=error_fingerprint,
        )
        return bool(_returning_rows(session, stmt))

    @classmethod
    def _write_attempt(
        cls, session: Session, at: datetime | None, row: Any, outcome: Outcome, **fields: Any
    ) -> None:
        """One history row for the attempt an acquired ``row`` (id, event_id, retry_count) made."""
        cls._write_history(
            session, at, [history_row(row.id, row.event_id, row.retry_count + 1, outcome, **fields)]
        )

    @staticmethod
    def _write_history(session: Session, at: datetime | None, rows: list[dict[str, Any]]) -> None:
        if rows:
            session.execute(sql.insert_history(at), rows)

    # -- leases --------------------------------------------------------------------------

    @_database_errors
    def heartbeat(
        self,
        session: Session,
        worker_id: str,
        item_ids: Sequence[int] | None = None,
        *,
        lease_token: uuid.UUID | None = None,
        lock_timeout: float = 300,
    ) -> list[int]:
        """Extend the locks the lease ``lease_token`` (required) still holds: all of its
        items, or those in ``item_ids``; each now expires ``lock_timeout`` seconds from now
        (pass the ``lock_timeout`` you acquired with; the Worker does).

        Returns the ids still held: an id missing from the answer was lost (its lock
        expired and it was reclaimed) and its outcome will be refused.
        """
        check.text("worker_id", worker_id)
        token = required_token(lease_token)
        lock_timeout = check.seconds("lock_timeout", lock_timeout, allow_zero=False)
        ids = valid_ids(item_ids)
        at = self._locked_now(session)
        stmt = sql.heartbeat(at, token, ids, lock_timeout)
        return sorted(row.id for row in _returning_rows(session, stmt))

    @_database_errors
    def release(
        self,
        session: Session,
        worker_id: str,
        item_ids: Sequence[int] | None = None,
        *,
        lease_token: uuid.UUID | None = None,
        force: bool = False,
    ) -> list[int]:
        """Give a lease's processing items back to pending at once (e.g. on shutdown).

        ``lease_token`` is required: all of the lease's items, or those in ``item_ids``.
        ``force=True`` is the operator's path (``retryqueue release ID...``): the
        processing items in ``item_ids`` (required), whoever holds them; their holders'
        outcomes are then refused. Not an attempt: retry_count and the due time are
        unchanged, no history is written. Returns the ids released.
        """
        check.text("worker_id", worker_id)
        if not isinstance(force, bool):
            raise InvalidArgument("force", "expected a bool")
        ids = valid_ids(item_ids)
        if force:
            if lease_token is not None:
                raise InvalidArgument("force", "ignores leases; pass lease_token or force=True")
            if not ids:
                raise InvalidArgument("item_ids", "an operator's release names the items")
            stmt = sql.release_forced(ids)
        else:
            stmt = sql.release(required_token(lease_token), ids)
        return sorted(row.id for row in _returning_rows(session, stmt))

    # -- administration ------------------------------------------------------------------

    @_database_errors
    def requeue(
        self,
        session: Session,
        selection: ItemFilter | Sequence[int],
        *,
        reset_retries: bool = True,
        requested_by: str | None = None,
    ) -> list[int]:
        """Move finished items (dead_letter and failed by default) back to pending, due now.

        ``selection`` is an :class:`ItemFilter` or a list of ids (dead_letter or failed).
        Completed items are replayed only if the filter's statuses name ``completed``.
        Each requeued item gets a ``requeued`` history row. Returns the ids moved.
        """
        item_filter = check.item_filter(
            selection if isinstance(selection, ItemFilter) else ItemFilter(ids=list(selection))
        )
        requested_by = check.optional_text("requested_by", requested_by)
        statuses = check.status_list("statuses", item_filter.statuses)
        if not set(statuses) <= set(TERMINAL_STATUSES):
            raise InvalidArgument(
                "statuses", "only completed, failed and dead_letter items can be requeued"
            )
        at = self.now(session)
        ids = list(session.scalars(sql.filtered_ids(item_filter, lock=True)))
        if not ids:
            return []
        stmt = sql.requeue_ids(
            at,
            ids,
            statuses,
            reset_retries=reset_retries,
            ttl_seconds=self.default_ttl.total_seconds(),
        )
        moved = _returning_rows(session, stmt)
        if (hook := hooks.active) is not None and moved:
            self._traced_replay(session, hook, sorted(row.id for row in moved), requested_by)
        self._write_history(
            session,
            at,
            [
                history_row(
                    row.id, row.event_id, row.retry_count, "requeued", worker_id=requested_by
                )
                for row in moved
            ],
        )
        return sorted(row.id for row in moved)

    @staticmethod
    def _traced_replay(
        session: Session, hook: hooks.Instrumentation, ids: list[int], requested_by: str | None
    ) -> None:
        extra = hook.replay(ids, requested_by)
        if not extra:
            return
        rows = [
            {"item_id": item_id, "new_metadata": _merged(metadata, extra)}
            for item_id, metadata in session.execute(sql.item_metadata(ids))
        ]
        session.execute(sql.set_metadata(), rows)

    @_database_errors
    def purge(self, session: Session, selection: ItemFilter | Sequence[int]) -> list[int]:
        """Delete the items a filter (or id list) selects; items being processed are kept.

        History rows stay (they are the audit trail). Returns the ids deleted.
        """
        item_filter = check.item_filter(
            selection
            if isinstance(selection, ItemFilter)
            else ItemFilter(statuses=tuple(RetryStatus), ids=list(selection))
        )
        ids = list(session.scalars(sql.filtered_ids(item_filter, lock=True)))
        if not ids:
            return []
        return sorted(row.id for row in _returning_rows(session, sql.purge_ids(ids)))

    def iter_cleanup(
        self, session: Session, retention_days: float = 7, *, batch_size: int = 1000
    ) -> Iterator[CleanupResult]:
        """Clean up in bounded batches, yielding what each batch removed.

        Commit between batches (``for part in queue.iter_cleanup(s): s.commit()``) so that
        live workers are never blocked for long. Removes finished items (completed, failed,
        dead_letter) older than the retention, after moving pending items past expires_at
        to dead_letter (see :meth:`expire`: they are kept for the retention from then on);
        removes history older than twice the retention. Rows locked by
        others are skipped, not waited for.
        """
        longest = MAX_DELAY_SECONDS / 86400
        retention = check.seconds("retention_days", retention_days, maximum=longest) * 86400
        batch_size = check.bounded_int("batch_size", batch_size, low=1, high=100_000)
        at = self.now(session)
        try:
            yield from self._cleanup_batches(session, at, retention, batch_size)
        except SQLAlchemyError as exc:
            raise database_error("cleanup", exc) from exc

    def _cleanup_batches(
        self, session: Session, at: datetime | None, retention: float, batch_size: int
    ) -> Iterator[CleanupResult]:
        while True:  # first, nothing expired unrun is deleted unseen: it is dead-lettered
            expired = self._dead_letter_expired(session, at, batch_size)
            yield CleanupResult(expired_count=expired)
            if expired < batch_size:
                break
        created_before = yield from _drop_partitions(session, at, retention)
        while True:
            count = self._delete_finished(session, at, retention, batch_size, created_before)
            yield CleanupResult(deleted_count=count)
            if count < batch_size:
                break
        while True:
            count = self._delete_history(session, at, 2 * retention, batch_size)
            yield CleanupResult(history_deleted_count=count)
            if count < batch_size:
                break
        audit: Any = session.execute(sql.delete_circuit_events(at, 2 * retention))
        yield CleanupResult(circuit_events_deleted=int(audit.rowcount))
        hourly: Any = session.execute(sql.delete_hourly(at, 2 * retention))
        yield CleanupResult(hourly_rows_deleted=int(hourly.rowcount))
        workers: Any = session.execute(sql.delete_silent_workers(at, WORKER_DEAD_AFTER_SECONDS))
        yield CleanupResult(worker_rows_deleted=int(workers.rowcount))

    @staticmethod
    def _delete_finished(
        session: Session,
        at: datetime | None,
        retention: float,
        batch_size: int,
        created_before: datetime | None = None,
    ) -> int:
        return _delete_batch(
            session,
            sql.delete_finished_batch(
                at, retention, batch_size, created_before=created_before, once=_is_pg(session)
            ),
            sql.finished_batch_ids(at, retention, batch_size, created_before=created_before),
            sql.delete_by_ids,
        )

    @staticmethod
    def _delete_history(
        session: Session, at: datetime | None, retention: float, batch_size: int
    ) -> int:
        return _delete_batch(
            session,
            sql.delete_history_batch(at, retention, batch_size, once=_is_pg(session)),
            sql.history_batch_ids(at, retention, batch_size),
            sql.delete_history_by_ids,
        )

    def iter_rotate_keys(self, session: Session, *, batch_size: int = 500) -> Iterator[int]:
        """Re-encrypt event_data and error messages under the newest key, in batches.

        Reads each row with whichever configured key sealed it (or as plaintext) and writes
        it back sealed with the newest key (see :mod:`retryqueue.encryption`). Yields the
        number of rows rewritten per batch; commit between batches. Rows being processed
        are rewritten too: only the sealed columns change.

        Queue rows are locked from the read to the commit, so a concurrent outcome (a
        ``fail()`` writing its error message) is never overwritten by the older value read
        here. Rows another transaction holds are skipped and come back at the end, where
        they are waited for.
        """
        batch_size = check.bounded_int("batch_size", batch_size, low=1, high=100_000)
        try:
            last, skipped = 0, list[int]()
            while rows := session.execute(sql.sealed_queue_rows(last, batch_size)).all():
                _refuse_undecryptable(rows)
                self._rewrite_queue_rows(session, rows)
                seen = {r.id for r in rows}
                between = session.scalars(sql.queue_ids_between(last, rows[-1].id))
                skipped += [item_id for item_id in between if item_id not in seen]
                last = rows[-1].id
                yield len(rows)
            for start in range(0, len(skipped), batch_size):
                chunk = skipped[start : start + batch_size]
                rows = session.execute(sql.sealed_queue_rows_by_id(chunk)).all()
                if rows:  # the others were deleted meanwhile
                    self._rewrite_queue_rows(session, rows)
                    yield len(rows)
            last = 0
            while rows := session.execute(sql.sealed_history_rows(last, batch_size)).all():
                _refuse_undecryptable(rows)
                session.execute(
                    sql.rewrite_history_rows(),
                    [{"id": r.id, "error_message": r.error_message} for r in rows],
                )
                last = rows[-1].id
                yield len(rows)
        except SQLAlchemyError as exc:
            raise database_error("rotate_keys", exc) from exc

    @staticmethod
    def _rewrite_queue_rows(session: Session, rows: Sequence[Any]) -> None:
        session.execute(
            sql.rewrite_queue_rows(),
            [
                {"id": r.id, "event_data": r.event_data, "error_message": r.error_message}
                for r in rows
            ],
        )

    def cleanup(
        self, session: Session, retention_days: float = 7, *, batch_size: int = 1000
    ) -> CleanupResult:
        """Run every cleanup batch (without committing) and return the totals."""
        total = CleanupResult()
        for part in self.iter_cleanup(session, retention_days, batch_size=batch_size):
            total = total + part
        return total

    # -- reading and monitoring ----------------------------------------------------------

    def get(self, session: Session, item_id: int) -> ItemSnapshot:
        """One item, or :class:`~retryqueue.errors.ItemNotFound`."""
        return monitoring.get_item(session, item_id)

    def find(self, session: Session, item_filter: ItemFilter) -> list[ItemSnapshot]:
        """The items a filter selects (what a requeue would move)."""
        return monitoring.find_items(session, check.item_filter(item_filter))

    def dead_letter_groups(
        self, session: Session, group_by: str = "error_code"
    ) -> list[DeadLetterGroup]:
        """Dead letters and failed items counted per error_code, event_type, plugin or
        channel (expired items have code ``EXPIRED``, deadlines ``DEADLINE_REACHED``)."""
        return monitoring.dead_letter_groups(session, group_by)

    def error_groups(
        self,
        session: Session,
        *,
        statuses: Sequence[RetryStatus | str] = monitoring.TRIAGE_STATUSES,
        limit: int = 100,
    ) -> list[ErrorGroup]:
        """Dead letters and failed items grouped by error code and fingerprint, largest
        first: count, first and last seen, plugins, a sample message (what
        ``retryqueue dead-letters --group-by fingerprint`` and the dashboard show)."""
        return monitoring.error_groups(session, statuses=statuses, limit=limit)

    def history(self, session: Session, item_id: int) -> list[HistoryEntry]:
        """An item's attempts and replays, oldest first."""
        return monitoring.item_history(session, item_id)

    def stats(self, session: Session) -> list[QueueStats]:
        """Counts per (status, event_type, plugin_name)."""
        return monitoring.stats(session)

    def alerts(self, session: Session) -> list[Alert]:
        """Items that need attention, with the reason (dead letters, failed items, stale
        locks, items near their retry limit, old pending items)."""
        return monitoring.alerts(session, self.now(session))

    def stuck(self, session: Session, older_than: float | timedelta = 3600) -> list[ItemSnapshot]:
        """Items processing for longer than ``older_than`` (seconds or timedelta)."""
        age = check.seconds("older_than", older_than)
        return monitoring.stuck(session, self.now(session), age)

    def items_per_hour(self, session: Session, hours: int = 24) -> list[HourlyCount]:
        """Items created per UTC hour over the last ``hours`` hours."""
        hours = check.bounded_int("hours", hours, low=1, high=24 * 366)
        return monitoring.items_per_hour(session, self.now(session), hours)

    def success_rate_by_event_type(self, session: Session) -> list[SuccessRate]:
        """Completed share of the finished items, per event type (pending ones not counted)."""
        return monitoring.success_rate_by_event_type(session)

    # -- worker support (appended for the worker runtime) ----------------------------------

    @_database_errors
    def seconds_until_claimable(
        self,
        session: Session,
        *,
        blocked: Mapping[str, float] | None = None,
        per_event_type: bool = False,
    ) -> float | None:
        """Seconds until the earliest item :meth:`acquire` could take is due; None if none.

        Like :meth:`seconds_until_due`, but expired and locked pending items, which acquire
        never takes, are ignored, so an idle worker does not keep waking for them.

        ``blocked`` maps open circuits' keys to the seconds until they may be probed (see
        :meth:`CircuitBreaker.probes_due_in`): their items count only from then on, so
        items held back by an open circuit do not make an idle worker poll.
        """
        at = self.now(session)
        keys = sorted(blocked or {})
        row = session.execute(sql.next_claimable_due(at, keys, per_event_type=per_event_type)).one()
        waits = [] if row.next_due is None else [(row.next_due - row.now).total_seconds()]
        if blocked and keys:
            by_key = sql.next_claimable_due_by_key(at, keys, per_event_type=per_event_type)
            for held in session.execute(by_key):
                due = (held.next_due - held.now).total_seconds()
                waits.append(max(due, blocked[held.circuit_key]))
        return float(min(waits)) if waits else None


def _unless_past_deadline(
    row: Any,
    policy: RetryPolicy,
    decision: Decision,
    error_message: str | None,
    error_code: str | None,
    retry_after_given: bool,
) -> tuple[Decision, str | None, str | None]:
    """The decision bounded by the item's retry deadline (or the policy's ``retry_for``).

    A refused retry is recorded with :data:`~retryqueue.policy.DEADLINE_REACHED` as its
    code; the handler's message and code follow the reason in the message.
    """
    if row.now is None:
        return decision, error_message, error_code
    deadline = policy.deadline_of(row.retry_deadline, row.created_at)
    bounded = within_deadline(
        decision, now=row.now, deadline=deadline, retry_after_given=retry_after_given
    )
    if bounded.reason is None:
        return bounded, error_message, error_code
    message = f"dead-lettered: {bounded.reason}"
    if error_message is not None or error_code is not None:
        code = "" if error_code is None else f" ({error_code})"
        message += f"; last error{code}: {error_message or ''}"
    return bounded, message, DEADLINE_REACHED


def _unless_past_expiry(
    row: Any, decision: Decision, error_message: str | None
) -> tuple[Decision, str | None]:
    """A retry due after the item expires is a dead letter, with the reason in the message.

    ``row`` carries ``now`` and ``expires_at`` (see ``statements.lock_owned``).
    """
    if decision.delay is None or row.expires_at is None or row.now is None:
        return decision, error_message
    due = row.now + decision.delay
    if due < row.expires_at:
        return decision, error_message
    reason = (
        f"dead-lettered: {RETRY_PAST_EXPIRY} (retry due {due.isoformat()}, "
        f"expires {row.expires_at.isoformat()})"
    )
    message = reason if error_message is None else f"{reason}; last error: {error_message}"
    return Decision(Outcome.DEAD_LETTERED, "dead_letter", row.retry_count), message


def _refuse_undecryptable(rows: Sequence[Any]) -> None:
    """Key rotation must not write back what it could not read (the old key would be lost)."""
    for row in rows:
        for name in ("event_data", "error_message"):
            value = getattr(row, name, None)
            if isinstance(value, encryption.Undecryptable):
                raise encryption.EncryptionError(
                    f"row {row.id}: {name} cannot be decrypted ({value.reason}); rotation "
                    "stopped: configure every key still in use (newest first) and run it again"
                )


def _drop_partitions(
    session: Session, at: datetime | None, retention: float
) -> Generator[CleanupResult, None, datetime | None]:
    """On a partitioned table (PostgreSQL), drop the months past the retention.

    Returns None on a plain table; else the start of the oldest month not past the
    retention: DELETE-based cleanup then only touches the older months that had to be
    kept (they still hold live items), never the months that will be dropped later.
    """
    if session.get_bind().dialect.name != "postgresql":
        return None
    # Imported here: the migrations package brings alembic, which workers never need.
    from retryqueue.migrations import partitioning

    # session.connection() again after every yield: the caller may commit in between.
    if not partitioning.is_partitioned(session.connection()):
        return None
    cutoff = partitioning.server_now(session.connection(), at) - timedelta(seconds=retention)
    for part in partitioning.partitions_past(session.connection(), cutoff):
        drop = partitioning.drop_partition(session.connection(), part, cutoff)
        if drop.dropped:
            # Before the yield, in the drop's transaction: a caller that stops iterating
            # must not leave the month's event keys behind forever.
            partitioning.forget_keys(session.connection(), part)
            yield CleanupResult(deleted_count=drop.rows, partitions_dropped=1)
    return partitioning.month_start(cutoff)


def _delete_batch(
    session: Session,
    in_one_statement: Any,
    batch_ids: Any,
    delete_ids: Callable[[Sequence[int]], Any],
) -> int:
    """Delete one bounded batch; returns how many rows went."""
    if _has_returning(session):
        return int(session.execute(in_one_statement).rowcount)  # type: ignore[attr-defined]
    # MySQL cannot DELETE through a LIMITed subquery of the same table: ids first.
    ids = list(session.scalars(batch_ids))
    if ids:
        session.execute(delete_ids(ids))
    return len(ids)


def _merged(metadata: Mapping[str, Any] | None, extra: Mapping[str, Any]) -> dict[str, Any]:
    """``metadata`` with ``extra``'s entries; mappings under the same key are merged."""
    merged: dict[str, Any] = _thawed(metadata or {})
    for key, value in _thawed(extra).items():
        before = merged.get(key)
        merged[key] = (
            {**before, **value} if isinstance(before, dict) and isinstance(value, dict) else value
        )
    return merged


def _thawed(value: Any) -> Any:
    """Plain JSON values from read-only views (mappings become dicts, tuples lists)."""
    if isinstance(value, Mapping):
        return {key: _thawed(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_thawed(item) for item in value]
    return value


def _guard(item_id: int, token: uuid.UUID | None) -> Any:
    """The WHERE clause of an outcome: the lease's, or (token None: ``force=True``) the
    operator's."""
    return sql.operator_guard(item_id) if token is None else sql.owned_guard(item_id, token)


# COPY costs four round trips (create the staging table if missing, COPY, INSERT,
# TRUNCATE): worth it for a bulk, not for a few rows (a single enqueue keeps one).
_COPY_FROM_ROWS = 50


def _psycopg_connection(session: Session) -> Any:
    """The session's psycopg 3 (sync) connection, or None (another driver, or async)."""
    try:
        import psycopg
    except ImportError:
        return None
    raw = session.connection().connection.driver_connection
    return raw if isinstance(raw, psycopg.Connection) else None


def _insert_by_copy(
    session: Session, raw: Any, rows: list[dict[str, Any]], server_clock: bool
) -> dict[uuid.UUID, int]:
    """PostgreSQL with psycopg 3, in the caller's transaction: COPY the rows into a
    temporary staging table, then one INSERT ... SELECT (ON CONFLICT DO NOTHING) moves them
    into the queue. Returns {event_id: id} of the rows inserted."""
    import psycopg

    connection = _core(session)
    dialect = connection.dialect
    create, copy_rows, clear = sql.staging_statements(server_clock, dialect)
    connection.exec_driver_sql(create)
    try:
        with raw.cursor() as cursor, cursor.copy(copy_rows) as copy:
            for values in sql.staged_rows(rows, dialect, server_clock):
                copy.write_row(values)
    except psycopg.Error as exc:
        raise database_error("enqueue_many", exc) from exc
    inserted = {
        event_id: item_id
        for item_id, event_id in connection.execute(sql.insert_items_staged(server_clock))
    }
    connection.exec_driver_sql(clear)
    return inserted


def _core(session: Session) -> Connection:
    """The session's connection, for hot statements executed with Core.

    An ORM-enabled UPDATE through ``Session.execute`` pays for the ORM's bulk-update
    machinery on every call; on the connection the same compiled statement runs as plain
    Core (same transaction). Pending ORM changes are flushed first, as autoflush would.
    """
    if session.autoflush and (session.new or session.dirty or session.deleted):
        session.flush()
    return session.connection()


@contextmanager
def _atomic(session: Session) -> Iterator[None]:
    """Make the block one transaction even when the session's connection autocommits (a
    worker's single-statement flush): an explicit BEGIN … COMMIT around it. Inside an
    ordinary transaction it is that transaction."""
    connection = session.connection()
    if connection.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
        yield
        return
    connection.exec_driver_sql("BEGIN")
    try:
        yield
    except BaseException:
        connection.exec_driver_sql("ROLLBACK")
        raise
    connection.exec_driver_sql("COMMIT")


def _is_pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _has_returning(session: Session) -> bool:
    return sql.has_returning(session.get_bind().dialect.name)


def _returning_rows(
    session: Session, stmt: Any, params: Mapping[str, Any] | None = None
) -> list[Any]:
    """The rows of an UPDATE/DELETE ... RETURNING (on MySQL: of its three-step form)."""
    if _has_returning(session):
        return list(_core(session).execute(stmt, params).all())
    return _run_emulated(session, sql.emulate_returning(stmt), params)


def _run_emulated(
    session: Session, emulation: sql.Emulation, params: Mapping[str, Any] | None = None
) -> list[Any]:
    # MySQL/MariaDB, in the caller's transaction: lock the ids, change exactly those rows,
    # then read back what RETURNING would have given (ids only for a DELETE).
    ids = list(session.scalars(emulation.lock, params))
    if not ids:
        return []
    session.execute(emulation.apply(ids), params)
    if emulation.read is None:
        return [_IdRow(item_id) for item_id in ids]
    return list(session.execute(emulation.read(ids), params).all())


@dataclass(frozen=True, slots=True)
class _IdRow:
    id: int
