"""Capture of the ``retryqueue.worker`` logger's records, for tests that await a log line."""

from __future__ import annotations

import logging
import threading

__all__ = ["LogRecorder"]


class LogRecorder(logging.Handler):
    """Keeps the records of the ``retryqueue.worker`` logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._lock_records = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock_records:
            self.records.append(record)

    def matching(self, text: str, level: int = logging.DEBUG) -> list[logging.LogRecord]:
        """Records at ``level`` or above whose message contains ``text``."""
        with self._lock_records:
            return [r for r in self.records if r.levelno >= level and text in r.getMessage()]
