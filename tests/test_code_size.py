"""Size limits that keep each module readable on its own (docs/architecture.md): no project module over
600 lines, no function over 80 lines. The product, its tests and its benchmarks are all held to them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("phi_assets", "resources", "jobs", "sensors", "k8s", "tests", "benchmarks")
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def modules() -> list[Path]:
    found = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))
    assert len(found) > 150, f"expected the project's modules under {PACKAGES}, found {len(found)}"
    return found


def oversized(source: str, name: str) -> list[str]:
    """What in ``source`` is over a limit: the module's line count, each function longer than allowed
    (from its ``def`` line to its last line, nested functions counted on their own too)."""
    found = []
    lines = len(source.splitlines())
    if lines > MAX_MODULE_LINES:
        found.append(f"{name}: {lines} lines (limit {MAX_MODULE_LINES})")
    for node in ast.walk(ast.parse(source, filename=name)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{name}:{node.lineno} {node.name}: {length} lines (limit {MAX_FUNCTION_LINES})")
    return found


def test_no_module_or_function_over_the_limits():
    found = [f for path in modules() for f in oversized(path.read_text(encoding="utf-8"),
                                                          str(path.relative_to(ROOT)))]
    assert not found, "split these:\n" + "\n".join(found)


@pytest.mark.parametrize(("source", "flagged"), [
    ("x = 1\n" * MAX_MODULE_LINES, []),
    ("x = 1\n" * (MAX_MODULE_LINES + 1), ["m.py: 601 lines"]),
    ("def f():\n" + "    x = 1\n" * (MAX_FUNCTION_LINES - 1), []),
    ("class C:\n    async def f(self):\n" + "        x = 1\n" * MAX_FUNCTION_LINES, ["m.py:2 f: 81 lines"]),
    ("def outer():\n    def inner():\n" + "        x = 1\n" * MAX_FUNCTION_LINES,
     ["m.py:1 outer: 82 lines", "m.py:2 inner: 81 lines"]),
])
def test_the_check_flags_what_is_over(source, flagged):
    assert [f.split(" (limit")[0] for f in oversized(source, "m.py")] == flagged
