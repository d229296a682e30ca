"""``python -m benchmarks.steps [--quick] [--database-url URL] [--out FILE] [--since LABEL]``:
what each step of the worker's rebuild (issue #15) bought, measured in one run.

Each step is a commit of this repository. The script unpacks it (``git archive``) into a
temporary directory and runs *that commit's own* ``python -m benchmarks --only
drain,ceiling,enqueue`` against the same PostgreSQL, one step after the other, so every
step is measured with the code and the benchmark it had, next to the hand-written SQL loop
measured in the same minute. Ratios to that loop are what compare across steps; the
absolute figures move with the machine's load.

Without ``--database-url`` (or ``$RETRYQUEUE_BENCH_POSTGRES_URL``) it starts an embedded
PostgreSQL, like ``python -m benchmarks``. Never run as a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.server import bench_server

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class BuildStep:
    """One commit of the rebuild and what it changed."""

    label: str
    commit: str
    change: str


STEPS = (
    BuildStep(
        "before",
        "216f42b",
        "two transactions per batch (claim; record), threads started per batch",
    ),
    BuildStep(
        "pipeline + completer",
        "d11867c",
        "long-lived handler threads, prefetch, outcomes recorded with the next claim",
    ),
    BuildStep("Core execution", "9c88d80", "hot statements on the connection, not the ORM"),
    BuildStep("one statement", "46d790d", "complete + history + next claim in one statement"),
    BuildStep("COPY enqueue", "394fac2", "enqueue_many by COPY into a staging table"),
    BuildStep("autocommit", "acc483c", "autocommitted steady flush; everything merged since"),
    BuildStep(
        "arrays",
        "5b2d26a",
        "outcomes as array parameters (one statement text), only lost ids returned, "
        "completions driven by the leases, the driver's connection kept",
    ),
    BuildStep("two in flight", "c2a4bec", "two pipeline transactions in flight on PostgreSQL"),
    BuildStep(
        "positional rows",
        "0b4ce68",
        "claimed rows read by position; handlers wake a driver only when it can act",
    ),
    BuildStep("adaptive", "7fe9c4d", "the second transaction in flight only while it pays"),
    BuildStep(
        "generic plan",
        "e79f6ff",
        "the claim's LIMIT written in: one generic plan, no re-planning per batch",
    ),
    BuildStep("one session", "f8b7c4b", "each driver keeps one session on its connection"),
    BuildStep(
        "lean enqueue",
        "d4b5e96",
        "enqueue_many: staging rows leave in the INSERT (no TRUNCATE round trip), "
        "settings validated once per combination",
    ),
    BuildStep(
        "driver values",
        "d608cbd",
        "outcome arrays as one text parameter each; claimed rows read as the driver "
        "returns them; routes resolved once per event type (and everything merged since)",
    ),
    BuildStep(
        "DB-API flush",
        "602b736",
        "the steady flush's compiled text run on the session's DB-API connection "
        "(psycopg, psycopg async, asyncpg), not through SQLAlchemy's execution",
    ),
    BuildStep(
        "turns",
        "5f04760",
        "concurrency=1 with two flushes in flight: the drivers run the handlers in turns "
        "(no handler thread); a driver claims its next batch beside the other's flush",
    ),
    BuildStep(
        "kept sessions",
        "HEAD",
        "each driver's autocommitted flush session stays open between flushes "
        "(both workers); the asyncio worker waits without a task per wait",
    ),
)


def _unpack(commit: str, into: Path) -> None:
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)


def _run_step(step: BuildStep, url: str, quick: bool, work: Path) -> list[dict[str, Any]]:
    tree = work / step.label.replace(" ", "-")
    tree.mkdir()
    _unpack(step.commit, tree)
    out = work / f"{tree.name}.json"
    argv = [sys.executable, "-m", "benchmarks", "--only", "drain,ceiling,enqueue"]
    argv += ["--no-doc", "--database-url", url, "--out", str(out)]
    if quick:
        argv.append("--quick")
    env = dict(os.environ, PYTHONPATH=str(tree))
    print(f"== {step.label} ({step.commit})", flush=True)
    subprocess.run(argv, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    figures: list[dict[str, Any]] = json.loads(out.read_text())["figures"]
    return figures


def _value(figures: list[dict[str, Any]], scenario: str, system: str, **params: Any) -> float:
    for figure in figures:
        if figure["scenario"] != scenario or figure["system"] != system:
            continue
        if all(figure["params"].get(key) == value for key, value in params.items()):
            return float(figure["value"] or 0.0)
    return float("nan")


def summarise(results: dict[str, list[dict[str, Any]]]) -> str:
    """A Markdown table: per step, the drains and their ratio to the SQL loop."""
    lines = [
        "| step | commit | drain, 1 process, batch 10 (SQL loop) | ratio | 4 processes: ratio "
        "| batch 100: ratio | enqueue_many items/s (raw COPY) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for step in STEPS:
        figures = results.get(step.label)
        if figures is None:
            continue
        ratios = []
        for workers, batch in ((1, 10), (4, 10), (1, 100)):
            ours = _value(figures, "drain", "retryqueue", workers=workers, batch=batch)
            loop = _value(figures, "drain", "sql-ceiling", workers=workers, batch=batch)
            ratios.append((ours, loop, ours / loop if loop else float("nan")))
        bulk = _value(figures, "enqueue_bulk", "retryqueue")
        copy = _value(figures, "enqueue_bulk", "raw-copy")
        copied = "n/a" if copy != copy else f"{copy:,.0f}"  # NaN: no baseline in that commit
        (ours, loop, ratio), (_, _, ratio4), (_, _, ratio100) = ratios
        lines.append(
            f"| {step.label} | {step.commit} | {ours:,.0f} ({loop:,.0f}) | {ratio:.2f} "
            f"| {ratio4:.2f} | {ratio100:.2f} | {bulk:,.0f} ({copied}) |"
        )
    return "\n".join(lines)


def main() -> None:
    """Run every step's benchmark against one server; print and save the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--database-url")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/steps.json")
    parser.add_argument("--since", metavar="LABEL", help="run only this step and the ones after it")
    args = parser.parse_args()
    labels = [step.label for step in STEPS]
    if args.since is not None and args.since not in labels:
        parser.error(f"--since: no step {args.since!r}; the steps are {', '.join(labels)}")
    chosen = STEPS[labels.index(args.since) :] if args.since else STEPS
    url = args.database_url or os.environ.get("RETRYQUEUE_BENCH_POSTGRES_URL")
    started = datetime.now(UTC).isoformat(timespec="seconds")
    results: dict[str, list[dict[str, Any]]] = {}
    with bench_server(url) as server, tempfile.TemporaryDirectory() as work:
        for step in chosen:
            admin = server.admin_url.render_as_string(hide_password=False)
            results[step.label] = _run_step(step, admin, args.quick, Path(work))
    table = summarise(results)
    args.out.write_text(json.dumps({"started": started, "results": results}, indent=1))
    print(f"Run of {started} ({'quick' if args.quick else 'full'} mode)\n\n{table}")


if __name__ == "__main__":
    main()
