"""RetryQueue: the queue's operations on the caller's Session.

Every method takes the application's :class:`~sqlalchemy.orm.Session` and never commits:
the caller owns the transaction (the worker and the CLI commit their own). Statements come
from :mod:`retryqueue.statements`; failure decisions from :mod:`retryqueue.policy`.

The statements bypass the Session's identity map (``synchronize_session=False``): if your
Session holds :class:`~retryqueue.models.RetryItem` objects, expire them after a call.

The class is composed by concern, one module each: ``_enqueue`` (writes of new items),
``_claims`` (acquire, stale locks, expiry), ``_outcomes`` (complete, leases),
``_failures`` (fail, pauses), ``_admin`` (requeue, purge, cleanup, rotation, limits) and
``_reads`` (monitoring); ``_base`` holds the settings and shared bookkeeping,
``_support`` the module-level helpers.
"""

from __future__ import annotations

from retryqueue._new_rows import NewItem
from retryqueue._rows import TRACEBACK_LIMIT
from retryqueue.queue._admin import _Admin
from retryqueue.queue._enqueue import _Enqueue
from retryqueue.queue._failures import _Failures
from retryqueue.queue._outcomes import _Outcomes
from retryqueue.queue._reads import _Reads
from retryqueue.queue._support import NOTIFY_CHANNEL, UNDECRYPTABLE, listen_statement

__all__ = [
    "NOTIFY_CHANNEL",
    "TRACEBACK_LIMIT",
    "UNDECRYPTABLE",
    "NewItem",
    "RetryQueue",
    "listen_statement",
]


class RetryQueue(_Reads, _Admin, _Failures, _Outcomes, _Enqueue):
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
