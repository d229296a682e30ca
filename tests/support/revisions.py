"""The shipped revision line, so that tests name "everything after rqNNNN" without a list to
keep in step with each new revision."""

from __future__ import annotations

from retryqueue import migrations

__all__ = ["HEAD", "after"]

HEAD = migrations.heads()[0]


def after(revision: str) -> list[str]:
    """The revisions after ``revision`` up to the head, in upgrade order."""
    return [f"rq{n:04d}" for n in range(int(revision[2:]) + 1, int(HEAD[2:]) + 1)]
