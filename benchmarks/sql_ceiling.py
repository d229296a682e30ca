"""The ceiling: a hand-written psycopg 3 loop over the same table, two statements per batch.

One ``UPDATE ... FOR UPDATE SKIP LOCKED ... RETURNING`` claims a batch (same candidate
predicate and order as retryqueue's claim), one ``UPDATE`` completes it; each statement is
its own transaction (autocommit). No history rows, no leases checked, no heartbeats: this is
the reference for what the database can do, not a queue anyone should ship.
"""

from __future__ import annotations

import os

import psycopg

from benchmarks.harness import Signals

CLAIM = """
UPDATE daz_retry_queue AS q
SET status = 'processing', locked_by = %(worker)s, locked_at = now(),
    lease_token = gen_random_uuid(), last_attempted_at = now()
FROM (
    SELECT id FROM daz_retry_queue
    WHERE status = 'pending' AND next_retry_at <= now() AND locked_by IS NULL
      AND expires_at > now()
    ORDER BY priority DESC, next_retry_at, id
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
) AS claimable
WHERE q.id = claimable.id
RETURNING q.id, q.event_type, q.event_data
"""

COMPLETE = """
UPDATE daz_retry_queue
SET status = 'completed', completed_at = now(), locked_by = NULL, locked_at = NULL,
    lease_token = NULL
WHERE id = ANY(%(ids)s)
"""


def consume(signals: Signals, dsn: str, batch_size: int) -> None:
    """Claim and complete batches until told to stop (runs in a child process)."""
    worker = f"sql-{os.getpid()}"
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
        signals.ready.set()
        signals.start.wait()
        while not signals.stop.is_set():
            rows = conn.execute(CLAIM, {"worker": worker, "batch": batch_size}).fetchall()
            if not rows:
                signals.stop.wait(0.01)
                continue
            for _row in rows:
                pass  # the no-op handler
            conn.execute(COMPLETE, {"ids": [row[0] for row in rows]})
