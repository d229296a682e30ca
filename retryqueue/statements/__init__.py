"""Every statement the library runs, and the only home of dialect differences.

Functions here build SQLAlchemy statements; they never execute them. ``at`` is the
operation's notion of "now": an aware datetime (bound as a parameter: the Python clock or
an injected test clock) or ``None`` for the database server's own clock.

Acquisition uses ``FOR UPDATE SKIP LOCKED`` (PostgreSQL, MySQL); SQLite ignores it and is
serialised by its single writer instead (see :mod:`retryqueue.engine`).

One room, several shelves: :mod:`.enqueue` (the bulk INSERT, NOTIFY/LISTEN),
:mod:`.claims` (acquire and outcomes), :mod:`.mysql` (the three-step forms for dialects
without ``UPDATE … RETURNING``), :mod:`.admin` (filters, requeue, cleanup, key rotation),
:mod:`.reading` (monitoring), :mod:`.circuits` (the circuit breaker's rows); shared
expressions in :mod:`._base`. Import from this package, not from the shelves.
"""

from __future__ import annotations

from retryqueue.statements._base import (
    after,
    has_returning,
    now_expr,
)
from retryqueue.statements.admin import (
    delete_by_ids,
    delete_circuit_events,
    delete_finished_batch,
    delete_history_batch,
    expired_batch,
    filtered_ids,
    purge_ids,
    requeue_ids,
    rewrite_history_rows,
    rewrite_queue_rows,
    sealed_history_rows,
    sealed_queue_rows,
)
from retryqueue.statements.circuits import (
    CIRCUIT_COLUMNS,
    all_circuits,
    circuit_events,
    circuit_transition_counts,
    circuits_by_key,
    circuits_not_closed,
    database_now,
    insert_circuit_events,
    insert_circuits,
    update_circuit,
)
from retryqueue.statements.claims import (
    CLAIM_COLUMNS,
    Bound,
    apply_failure,
    circuit_key_of_item,
    claim,
    complete_many,
    complete_owned,
    heartbeat,
    insert_history,
    lock_owned,
    owned_guard,
    reclaim_stale,
    release,
    select_stale,
    stale_ids,
)
from retryqueue.statements.enqueue import (
    NOTIFY_CHANNEL,
    enqueued_by_event_ids,
    existing_by_event_ids,
    insert_items,
    listen,
    next_due,
    notify,
    server_time_params,
)
from retryqueue.statements.mysql import (
    Emulation,
    claim_emulated,
    delete_history_by_ids,
    emulate_returning,
    finished_batch_ids,
    history_batch_ids,
)
from retryqueue.statements.reading import (
    DEAD_LETTER_GROUPS,
    SNAPSHOT_COLUMNS,
    alerts,
    dead_letter_groups,
    history_for_item,
    items_per_hour,
    next_claimable_due,
    queue_gauges,
    select_filtered,
    select_item,
    stats,
    stuck,
    success_rate_by_event_type,
)

__all__ = [
    "CIRCUIT_COLUMNS",
    "CLAIM_COLUMNS",
    "DEAD_LETTER_GROUPS",
    "NOTIFY_CHANNEL",
    "SNAPSHOT_COLUMNS",
    "Bound",
    "Emulation",
    "after",
    "alerts",
    "all_circuits",
    "apply_failure",
    "circuit_events",
    "circuit_key_of_item",
    "circuit_transition_counts",
    "circuits_by_key",
    "circuits_not_closed",
    "claim",
    "claim_emulated",
    "complete_many",
    "complete_owned",
    "database_now",
    "dead_letter_groups",
    "delete_by_ids",
    "delete_circuit_events",
    "delete_finished_batch",
    "delete_history_batch",
    "delete_history_by_ids",
    "emulate_returning",
    "enqueued_by_event_ids",
    "existing_by_event_ids",
    "expired_batch",
    "filtered_ids",
    "finished_batch_ids",
    "has_returning",
    "heartbeat",
    "history_batch_ids",
    "history_for_item",
    "insert_circuit_events",
    "insert_circuits",
    "insert_history",
    "insert_items",
    "items_per_hour",
    "listen",
    "lock_owned",
    "next_claimable_due",
    "next_due",
    "notify",
    "now_expr",
    "owned_guard",
    "purge_ids",
    "queue_gauges",
    "reclaim_stale",
    "release",
    "requeue_ids",
    "rewrite_history_rows",
    "rewrite_queue_rows",
    "sealed_history_rows",
    "sealed_queue_rows",
    "select_filtered",
    "select_item",
    "select_stale",
    "server_time_params",
    "stale_ids",
    "stats",
    "stuck",
    "success_rate_by_event_type",
    "update_circuit",
]
