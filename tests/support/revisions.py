"""The shipped revision line, so that tests name "everything after rqNNNN" without a list to
keep in step with each new revision."""

from __future__ import annotations

from retryqueue import migrations

__all__ = ["ALL", "HEAD", "after"]

HEAD = migrations.heads()[0]

# Walked down the chain (not counted by number: a revision id may skip numbers).
ALL = [script.revision for script in migrations.script_directory().walk_revisions()][::-1]


def after(revision: str) -> list[str]:
    """The revisions after ``revision`` up to the head, in upgrade order."""
    return ALL[ALL.index(revision) + 1 :]
