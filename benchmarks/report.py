"""Output of a run: the JSON file, the markdown table in docs/benchmarks.md, the PNG chart."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import Figure

START = "<!-- benchmarks:start -->"
END = "<!-- benchmarks:end -->"
REFERENCE = {"W": 1, "B": 10}


def write_json(path: Path, meta: dict[str, Any], figures: Sequence[Figure]) -> None:
    """The whole run, machine-readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "figures": [figure.as_json() for figure in figures]}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def _drain(figures: Sequence[Figure], system: str, workers: int, batch: int) -> float | None:
    for figure in figures:
        if (
            figure.scenario == "drain"
            and figure.system == system
            and figure.params.get("workers") == workers
            and figure.params.get("batch") == batch
            and figure.value is not None
        ):
            return figure.value
    return None


def ratios(figures: Sequence[Figure]) -> dict[str, float | None]:
    """retryqueue's drain rate over each reference, one worker process and batch 10."""
    mine = _drain(figures, "retryqueue", 1, 10)
    out: dict[str, float | None] = {}
    for label, system, workers in (
        ("retryqueue / SQL ceiling (1 process)", "sql-ceiling", 1),
        ("retryqueue / SQL ceiling (4 processes, both)", "sql-ceiling", 4),
        ("retryqueue / pgqueuer-asyncpg", "pgqueuer-asyncpg", 1),
        ("retryqueue / pgqueuer-psycopg", "pgqueuer-psycopg", 1),
        ("retryqueue / procrastinate", "procrastinate", 1),
    ):
        other = _drain(figures, system, workers, 10)
        numerator = _drain(figures, "retryqueue", 4, 10) if workers == 4 else mine
        out[label] = numerator / other if numerator and other else None
    bulk = {f.system: f.value for f in figures if f.scenario == "enqueue_bulk" and f.value}
    mine_bulk, copy = bulk.get("retryqueue"), bulk.get("raw-copy")
    out["enqueue_many / raw COPY (bulk)"] = mine_bulk / copy if mine_bulk and copy else None
    return out


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in params.items())


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if "ms" in unit:
        return f"{value:.1f} {unit}"
    return f"{value:,.0f} {unit}"


def median_rounds(figures: Sequence[Figure]) -> list[Figure]:
    """One figure per (scenario, system, parameters): of several rounds, the median one
    (the lower of the middle two for an even count), with every round's value in
    ``extra["rounds"]``; a configuration skipped in every round stays skipped. The order is
    that of each configuration's first figure."""
    groups: dict[str, list[Figure]] = {}
    for figure in figures:
        key = json.dumps([figure.scenario, figure.system, figure.params], sort_keys=True)
        groups.setdefault(key, []).append(figure)
    merged: list[Figure] = []
    for rounds in groups.values():
        measured = sorted(
            (figure for figure in rounds if figure.value is not None),
            key=lambda figure: figure.value or 0.0,
        )
        if len(rounds) == 1 or not measured:
            merged.append(rounds[0])
            continue
        middle = measured[(len(measured) - 1) // 2]
        values = [round(figure.value, 1) for figure in rounds if figure.value is not None]
        extra: dict[str, Any] = {**middle.extra, "rounds": values}
        if len(values) < len(rounds):
            extra["rounds_skipped"] = len(rounds) - len(values)
        merged.append(dataclasses.replace(middle, extra=extra))
    return merged


def _detail(value: Any) -> str:
    if isinstance(value, list):  # every round's figure, in the order they ran
        return " / ".join(f"{item:,.0f}" for item in value)
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def markdown(meta: dict[str, Any], figures: Sequence[Figure]) -> str:
    """The tables for docs/benchmarks.md."""
    lines = [
        f"Run of {meta['started']} ({meta['mode']} mode), git {meta['git_commit']}, "
        f"{meta['cpu_count']} CPUs, {meta['postgres']['version'].split(' on ')[0]} "
        f"({meta['postgres']['origin']}; shared_buffers={meta['postgres']['shared_buffers']}, "
        f"synchronous_commit={meta['postgres']['synchronous_commit']}, "
        f"fsync={meta['postgres']['fsync']}). Compare within this run only."
        + (
            f" Enqueue and drain figures: the median of {meta['rounds']} interleaved rounds"
            " (every round's figure under details)."
            if meta.get("rounds", 1) > 1
            else ""
        ),
        "",
        "| scenario | system | parameters | figure | details |",
        "| --- | --- | --- | ---: | --- |",
    ]
    for figure in figures:
        if figure.skipped:
            detail = f"skipped: {figure.skipped}"
        else:
            detail = ", ".join(
                f"{key}={_detail(value)}"
                for key, value in figure.extra.items()
                if key == "rounds" or not isinstance(value, list | dict)
            )
        lines.append(
            f"| {figure.scenario} | {figure.system} | {_params(figure.params)} | "
            f"{_number(figure.value, figure.unit)} | {detail} |"
        )
    lines += ["", "| ratio (batch 10 drains; bulk enqueue) | value |", "| --- | ---: |"]
    for label, value in ratios(figures).items():
        lines.append(f"| {label} | {'n/a' if value is None else f'{value:.2f}'} |")
    return "\n".join(lines) + "\n"


def update_doc(path: Path, table: str) -> None:
    """Replace what stands between the markers (append the markers if absent)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{START}\n{table}{END}"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def chart(path: Path, meta: dict[str, Any], figures: Sequence[Figure]) -> None:
    """Bar charts: drain throughput per system/config, and enqueue throughput."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drains = [f for f in figures if f.scenario == "drain" and f.value is not None]
    enqueues = [f for f in figures if f.scenario.startswith("enqueue") and f.value is not None]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [3, 1]})
    labels = [f"{f.system}\nW={f.params['workers']} B={f.params['batch']}" for f in drains]
    colours = [
        "tab:blue"
        if f.system == "retryqueue"
        else "tab:grey"
        if f.system == "sql-ceiling"
        else "tab:orange"
        for f in drains
    ]
    left.barh(labels, [f.value or 0 for f in drains], color=colours)
    left.invert_yaxis()
    left.set_xlabel("items/s drained (no-op handler, counted in the database)")
    left.set_title("Drain throughput")
    for index, figure in enumerate(drains):
        left.text(figure.value or 0, index, f" {figure.value:,.0f}", va="center", fontsize=8)
    right.bar(
        [f.scenario.removeprefix("enqueue_") for f in enqueues],
        [f.value or 0 for f in enqueues],
        color="tab:blue",
    )
    right.set_ylabel("items/s")
    right.set_title("retryqueue enqueue")
    fig.suptitle(
        f"retryqueue benchmarks ({meta['mode']}, {meta['started']}, {meta['cpu_count']} CPUs, "
        f"{meta['postgres']['version'].split(' on ')[0]})",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
