"""The Python blocks of the README and the guides run, so that they cannot rot.

Each page's blocks run in order in one namespace (a block may use what an earlier one
defined), in a fresh temporary folder. Markers on the line before a fence (see
docs/contributing.md): ``<!-- docs-test: pytest -->`` runs the block as a pytest module in
a subprocess (it must pass); ``<!-- docs-test: skip (reason) -->`` only runs the block's
imports (the block needs a server or is a fragment).
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["README.md", "docs/tutorial.md", "docs/testing.md", "docs/adoption.md"]
_FENCE = re.compile(r"^(?P<indent>\s*)```python\s*$")
_MARKER = re.compile(r"<!--\s*docs-test:\s*(?P<mode>skip|pytest)\b(?P<reason>.*?)-->")


@dataclass(frozen=True)
class Block:
    """One fenced Python block: where it starts, its code, and how to run it."""

    line: int
    code: str
    mode: str  # "run", "pytest" or "skip"


def python_blocks(text: str) -> list[Block]:
    """The ```` ```python ```` blocks of a Markdown text, dedented, with their markers."""
    lines = text.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        if fence is None:
            index += 1
            continue
        start, indent = index, fence["indent"]
        body: list[str] = []
        index += 1
        while index < len(lines) and lines[index].strip() != "```":
            body.append(lines[index][len(indent) :] if lines[index].startswith(indent) else "")
            index += 1
        previous = next((line for line in reversed(lines[:start]) if line.strip()), "")
        marker = _MARKER.search(previous)
        mode = marker["mode"] if marker else "run"
        blocks.append(Block(start + 1, textwrap.dedent("\n".join(body)) + "\n", mode))
        index += 1
    return blocks


def _run(block: Block, namespace: dict[str, Any], name: str) -> None:
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    code = compile(block.code, f"{name}:{block.line}", "exec", flags=flags)
    result = eval(code, namespace)
    if inspect.iscoroutine(result):  # the block used top-level await
        asyncio.run(result)


def _imports_only(block: Block, name: str) -> None:
    tree = ast.parse(block.code, f"{name}:{block.line}")
    imports = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    assert imports or block.code.strip(), "an empty block"
    exec(compile(ast.Module(imports, type_ignores=[]), name, "exec"), {})


def _run_with_pytest(block: Block, folder: Path, name: str) -> None:
    module = folder / f"test_doc_block_{block.line}.py"
    module.write_text(block.code)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", module.name],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{name}:{block.line}\n{done.stdout}\n{done.stderr}"
    assert " passed" in done.stdout


def test_the_parser_sees_markers_and_indented_fences() -> None:
    text = (
        "1. a step\n\n   <!-- docs-test: skip (needs a server) -->\n   ```python\n"
        "   import os\n   os.getcwd()\n   ```\n\n```python\nx = 1\n```\n"
    )
    blocks = python_blocks(text)
    assert [(b.mode, b.code) for b in blocks] == [
        ("skip", "import os\nos.getcwd()\n"),
        ("run", "x = 1\n"),
    ]


@pytest.mark.parametrize("page", PAGES)
def test_code_blocks_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks((ROOT / page).read_text())
    assert blocks, f"{page} has no Python block"
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))
    namespace: dict[str, Any] = {"__name__": f"docs_{Path(page).stem}"}
    try:
        for block in blocks:
            if block.mode == "skip":
                _imports_only(block, page)
            elif block.mode == "pytest":
                _run_with_pytest(block, tmp_path, page)
            else:
                _run(block, namespace, page)
    finally:
        for value in list(namespace.values()):
            if isinstance(value, Engine):
                value.dispose()
