"""Render exported spans (one JSON document per line, the SDK's ``to_json``) as trees.

``python docs/observability/trace_tree.py docs/observability/trace.jsonl`` prints each
trace, oldest first, its spans nested under their parents in start order, with the
retryqueue attributes that tell the story and the links of each span to other traces.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

SHOWN = (
    "retryqueue.attempt",
    "retryqueue.outcome",
    "retryqueue.backoff_seconds",
    "http.response.status_code",
)


def when(span: dict[str, Any]) -> datetime:
    """A span's start time."""
    return datetime.fromisoformat(span["start_time"].replace("Z", "+00:00"))


def label(span: dict[str, Any], names: dict[str, str]) -> list[str]:
    """The lines describing one span: name, kind, attributes, status, exception, links."""
    kind = span["kind"].removeprefix("SpanKind.")
    attributes = span.get("attributes") or {}
    shown = ", ".join(f"{k}={attributes[k]}" for k in SHOWN if k in attributes)
    status = span["status"]["status_code"]
    head = f"{span['name']} [{kind}] span {span['context']['span_id'][2:10]}"
    lines = [head + (f"  ({shown})" if shown else "") + ("" if status == "UNSET" else f" {status}")]
    for event in span.get("events") or []:
        if event["name"] == "exception":
            ex = event["attributes"]
            lines.append(f"  ! {ex['exception.type']}: {ex['exception.message']}")
    for link in span.get("links") or []:
        target = link["context"]["span_id"]
        why = (link.get("attributes") or {}).get("retryqueue.link", "link")
        lines.append(f"  ~ linked ({why}) to {names.get(target, '?')} span {target[2:10]}")
    return lines


def render(spans: list[dict[str, Any]]) -> str:
    """Every trace as an indented tree."""
    names = {s["context"]["span_id"]: s["name"] for s in spans}
    by_trace: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for span in spans:
        by_trace[span["context"]["trace_id"]].append(span)
    out: list[str] = []
    for number, members in enumerate(sorted(by_trace.values(), key=lambda m: min(map(when, m)))):
        children: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
        ids = {s["context"]["span_id"] for s in members}
        for span in sorted(members, key=when):
            parent = span.get("parent_id")
            children[parent if parent in ids else None].append(span)
        out.append(f"trace {number + 1} ({members[0]['context']['trace_id'][2:10]}...)")
        _walk(children, names, None, 0, out)
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _walk(
    children: dict[str | None, list[dict[str, Any]]],
    names: dict[str, str],
    parent: str | None,
    depth: int,
    out: list[str],
) -> None:
    for span in children[parent]:
        for index, line in enumerate(label(span, names)):
            out.append("  " * depth + ("└─ " if index == 0 else "   ") + line)
        _walk(children, names, span["context"]["span_id"], depth + 1, out)


def main(path: Path) -> None:
    spans = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    sys.stdout.write(render(spans))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
