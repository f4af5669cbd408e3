"""The code in the user guide runs: every ```python block of ``docs/*.md`` and ``README.md``.

The blocks of one page run in order, as one script in a fresh interpreter, with a temporary
directory as the working directory (so relative store paths land there). Each block keeps its
line numbers from the Markdown file, so a traceback points at the page's own line. Blocks fenced
```python no-run (servers, blocking workers) are shown to readers but not run; keep them rare.

Pages that start a worker pool put that code under ``if __name__ == "__main__":`` as users must:
the pool's children import the script again.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import run_in_session

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]
PAGE_TIMEOUT = 60.0

FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)\s*(.*?)\s*$")


@dataclass
class Block:
    """One fenced code block: its info string and its lines, with the line number of the first."""

    lang: str
    flags: str
    first_line: int  # 1-based line number of the block's first code line
    lines: list[str]

    @property
    def runs(self) -> bool:
        return self.lang == "python" and "no-run" not in self.flags.split()


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file (unterminated fences are an error)."""
    out: list[Block] = []
    current: Block | None = None
    fence = ""
    indent = ""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        m = FENCE.match(line)
        if current is None:
            if m:
                indent, fence = m.group(1), m.group(2)
                current = Block(m.group(3), m.group(4), number + 1, [])
            continue
        if m and m.group(2).startswith(fence) and not m.group(3) and not m.group(4):
            out.append(current)
            current = None
            continue
        current.lines.append(line[len(indent) :] if line.startswith(indent) else line)
    assert current is None, f"{path.name}: the code fence opened at line {current.first_line - 1} is never closed"
    return out


def script_of(path: Path) -> str:
    """The page's runnable blocks as one script, each line at its line number in the page."""
    lines: list[str] = []
    for block in blocks(path):
        if not block.runs:
            continue
        lines.extend([""] * (block.first_line - 1 - len(lines)))
        lines.extend(block.lines)
    return "\n".join(lines) + "\n"


def page_id(path: Path) -> str:
    return path.name if path.parent == DOCS else f"../{path.name}"


def test_the_guide_has_its_pages() -> None:
    names = {p.name for p in DOCS.glob("*.md")}
    expected = {
        "index.md",
        "getting-started.md",
        "tasks.md",
        "results.md",
        "workers.md",
        "periodic.md",
        "canvas.md",
        "testing.md",
        "guarantees.md",
        "migrating.md",
        "troubleshooting.md",
        "dashboard.md",
        "asyncio.md",
    }
    assert expected <= names, f"missing pages: {sorted(expected - names)}"


def test_the_checker_reads_fences_and_keeps_line_numbers(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# t\n\n```python\nx = 1\n```\n\ntext\n\n```python no-run\nblocking()\n```\n\n"
        "```sh\nls\n```\n\n- item\n\n  ```python\n  y = x + 1\n  ```\n"
    )
    found = blocks(page)
    assert [(b.lang, b.runs, b.first_line) for b in found] == [
        ("python", True, 4),
        ("python", False, 10),
        ("sh", False, 14),
        ("python", True, 20),
    ]
    script = script_of(page).splitlines()
    assert script[3] == "x = 1" and script[19] == "y = x + 1" and "blocking()" not in script


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_links_between_pages_resolve(page: Path) -> None:
    text = page.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_page_code_runs(page: Path, tmp_path: Path) -> None:
    found = blocks(page)
    runnable = [b for b in found if b.runs]
    skipped = [b for b in found if b.lang == "python" and not b.runs]
    if not runnable:
        assert not skipped, f"{page.name}: every python block is no-run; make at least one runnable"
        pytest.skip(f"{page.name} has no python code")
    assert len(skipped) <= max(2, len(runnable) // 3), f"{page.name}: too many no-run blocks ({len(skipped)})"
    script = tmp_path / f"doc_{page.stem.replace('-', '_')}.py"
    script.write_text(script_of(page))
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code, out, err = run_in_session(
        [sys.executable, "-W", "error", str(script)], cwd=work, env=env, timeout=PAGE_TIMEOUT, what=f"{page.name}: code"
    )
    # Line numbers in the traceback are the page's own; point at the page, not the temporary script.
    err = err.replace(str(script), str(page))
    assert code == 0, f"{page.name}: code failed (exit {code})\nstdout:\n{out}\nstderr:\n{err}"
