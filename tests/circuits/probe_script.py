"""A process that waits at a PostgreSQL barrier, then calls the breaker's gate once.

Usage: ``python probe_script.py URL OWNER BARRIER_KEY``. Prints the gate as one JSON line.
The barrier is an advisory lock the test holds exclusively: every process blocks on its
shared lock, and all are released at once when the test lets go.
"""

from __future__ import annotations

import json
import sys

from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from retryqueue import CircuitBreaker, create_engine


def main(url: str, owner: str, barrier: int) -> None:
    engine = create_engine(url, pool_size=2)
    sessions = sessionmaker(engine)
    breaker = CircuitBreaker()  # the database server's clock, as on real hosts
    with engine.connect() as waiting:
        waiting.execute(select(func.pg_advisory_lock_shared(barrier)))
        with sessions.begin() as session:
            gate = breaker.gate(session, owner=owner)
    print(json.dumps({"owner": owner, "probes": list(gate.probes)}), flush=True)
    engine.dispose()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
