"""The sandbox's worker (phi_assets/sandbox/worker/) runs in the isolated child: it imports only the standard
library (and its own modules), so no project or third-party code is loaded where the programs run."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from phi_assets.sandbox import run_program
from phi_assets.sandbox.worker import __main__ as entry
from phi_assets.sandbox.worker import protocol

WORKER_DIR = Path(protocol.__file__).resolve().parent


def imported_names(path: Path) -> list[tuple[int, str]]:
    """(level, module) of every import in the file: level 0 is absolute, 1 the worker package itself."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or ""))
    return found


def test_the_worker_imports_only_the_standard_library_and_itself() -> None:
    modules = sorted(WORKER_DIR.glob("*.py"))
    assert {path.name for path in modules} >= {"__init__.py", "__main__.py", "protocol.py", "serve.py"}
    siblings = {path.stem for path in modules}
    for path in modules:
        for level, name in imported_names(path):
            if level == 0:
                assert name.split(".")[0] in sys.stdlib_module_names, f"{path.name} imports {name}"
            else:  # from . import x, from .x import y: this package only
                assert level == 1 and (not name or name.split(".")[0] in siblings), f"{path.name}: {name}"


def test_the_child_loads_nothing_of_the_project() -> None:
    verdict = run_program("import sys\nprint(sorted(sys.modules))")
    assert verdict.kind == "passed", verdict
    loaded = set(ast.literal_eval(verdict.stdout))
    assert f"{entry.PACKAGE}.serve" in loaded  # the worker, loaded as a package of its own
    assert not [name for name in loaded if name.split(".")[0] in ("phi_assets", "resources", "tqdm", "dagster")]
    assert WORKER_DIR == Path(entry.__file__).resolve().parent == Path(protocol.WORKER_MAIN).parent
