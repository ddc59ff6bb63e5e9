"""The fast tier is real: every test that starts vLLM, Chromium, ``dagster dev``, DeepSpeed or the demo is
marked slow, so ``make test-fast`` (``pytest -m "not slow"``) cannot pick one up by accident.

The test modules are read, not run: a test starts one of them when its code, or that of a fixture or
module-level helper it reaches (its module's, then tests/conftest.py's), matches
``tests.support.tiers.ENTRY_POINTS``. It is slow when it reaches one of ``SLOW_FIXTURES`` (marked at
collection) or carries ``pytest.mark.slow`` (the function, its class or the module's ``pytestmark``).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

from tests.support.tiers import ENTRY_POINTS, SLOW_FIXTURES

TESTS = Path(__file__).resolve().parent
Function = ast.FunctionDef | ast.AsyncFunctionDef


def _is_fixture(fn: Function) -> bool:
    return any(ast.unparse(d).startswith(("pytest.fixture", "fixture")) for d in fn.decorator_list)


def _marks_slow(decorators: list[ast.expr]) -> bool:
    return any(ast.unparse(d).startswith("pytest.mark.slow") for d in decorators)


@dataclass
class Module:
    path: Path
    lines: list[str]
    functions: dict[str, Function] = field(default_factory=dict)  # module level: tests, fixtures, helpers
    fixtures: dict[str, Function] = field(default_factory=dict)
    tests: list[tuple[str, Function, bool]] = field(default_factory=list)  # (id, test, marked slow)

    @classmethod
    def read(cls, path: Path) -> Module:
        source = path.read_text()
        tree = ast.parse(source)
        module = cls(path, source.splitlines())
        marked = any(
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets)
            and "pytest.mark.slow" in ast.unparse(node.value)
            for node in tree.body
        )
        for node in tree.body:
            if isinstance(node, Function):
                module.functions[node.name] = node
                if _is_fixture(node):
                    module.fixtures[node.name] = node
                if node.name.startswith("test"):
                    module.tests.append((node.name, node, marked or _marks_slow(node.decorator_list)))
            elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
                in_class = marked or _marks_slow(node.decorator_list)
                for item in node.body:
                    if isinstance(item, Function) and item.name.startswith("test"):
                        marks = in_class or _marks_slow(item.decorator_list)
                        module.tests.append((f"{node.name}::{item.name}", item, marks))
        return module


@cache
def conftest() -> Module:
    return Module.read(TESTS / "conftest.py")


@cache
def read_test_modules() -> list[Module]:
    return [Module.read(path) for path in sorted(TESTS.glob("test_*.py")) if path != Path(__file__)]


@cache
def names(fn: Function) -> frozenset[str]:
    return frozenset(n.id for n in ast.walk(fn) if isinstance(n, ast.Name))


def reach(module: Module, fn: Function) -> tuple[set[str], list[str]]:
    """The fixture names ``fn`` reaches and the source of every function it reaches, its own included:
    fixtures by parameter (the module's first, then conftest's) and the module's helpers by name."""
    fixture_names: set[str] = set()
    sources: list[str] = []
    todo: list[tuple[Module, Function]] = [(module, fn)]
    seen: set[int] = set()
    while todo:
        where, node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        sources.append("\n".join(where.lines[node.lineno - 1 : node.end_lineno]))
        for arg in node.args.args + node.args.kwonlyargs:
            for home in (where, conftest()):
                fixture = home.fixtures.get(arg.arg)
                if fixture is not None and fixture is not node:
                    fixture_names.add(arg.arg)
                    todo.append((home, fixture))
                    break
        todo.extend((where, where.functions[name]) for name in names(node) & where.functions.keys())
    return fixture_names, sources


def starts(sources: list[str]) -> list[str]:
    """What of ``ENTRY_POINTS`` the code starts."""
    return [what for what, pattern in ENTRY_POINTS.items() if any(pattern.search(s) for s in sources)]


def test_every_test_that_starts_a_slow_dependency_is_marked_slow():
    unmarked = []
    for module in read_test_modules():
        for name, fn, marked in module.tests:
            fixture_names, sources = reach(module, fn)
            found = starts(sources)
            if found and not marked and not fixture_names & SLOW_FIXTURES:
                unmarked.append(f"{module.path.name}::{name} starts {', '.join(found)}")
    assert not unmarked, "mark these @pytest.mark.slow (tests/support/tiers.py):\n" + "\n".join(unmarked)


def test_the_shared_fixtures_that_start_one_are_the_slow_fixtures():
    fixtures = conftest().fixtures
    assert SLOW_FIXTURES <= set(fixtures)
    starting = set()
    for name, fn in fixtures.items():
        fixture_names, sources = reach(conftest(), fn)
        if starts(sources) and not fixture_names & SLOW_FIXTURES:
            starting.add(name)
    assert starting == SLOW_FIXTURES


def test_each_entry_point_is_found_somewhere():
    """The patterns still match the suite's code (a renamed entry point would make the check vacuous)."""
    found = {
        what
        for module in read_test_modules()
        for _, fn, _ in module.tests
        for what in starts(reach(module, fn)[1])
    }
    assert found == set(ENTRY_POINTS)


def test_tests_using_a_slow_fixture_are_marked_at_collection(request: pytest.FixtureRequest):
    assert any(line.startswith("slow:") for line in request.config.getini("markers"))
    unmarked = [
        item.nodeid
        for item in request.session.items
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("slow") is None
    ]
    assert not unmarked
