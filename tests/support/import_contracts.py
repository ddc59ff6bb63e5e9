"""A custom import-linter contract: no module imports a leading-underscore name from another module.

``from a.b import _helper`` and ``b._helper`` (``b`` an imported project module) both break it: a name that
another module needs is public in its one home. Dunder names (``__version__``) are allowed. Registered in
``pyproject.toml`` (``[tool.importlinter] contract_types``) and run by ``lint-imports`` in ``make test``.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from importlinter import Contract, ContractCheck, fields, output


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _source(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    return Path(spec.origin) if spec and spec.origin and spec.origin.endswith(".py") else None


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    parts = parts[: len(parts) - node.level + 1]
    return ".".join([*parts, *([node.module] if node.module else [])])


def private_imports(module: str, project: set[str]) -> list[tuple[int, str]]:
    """(line, what) for each private name ``module`` takes from another project module."""
    path = _source(module)
    if path is None:
        return []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = _absolute(module, path.name == "__init__.py", node)
            if base.split(".")[0] not in project or base == module:
                continue
            for alias in node.names:
                if _private(alias.name):
                    found.append((node.lineno, f"from {base} import {alias.name}"))
                elif f"{base}.{alias.name}" in project:
                    aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in project:
                    aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name):
            imported = aliases.get(node.value.id)
            if imported and imported != module:
                found.append((node.lineno, f"{imported}.{node.attr}"))
    return sorted(found)


class PrivateNamesContract(Contract):
    """Options: ``modules``: the packages whose modules are checked (all their descendants)."""

    modules = fields.ListField(subfield=fields.StringField())

    def check(self, graph, verbose: bool) -> ContractCheck:
        roots = set(self.modules)
        project = {m for m in graph.modules if m.split(".")[0] in {r.split(".")[0] for r in roots}}
        checked = sorted(m for m in project if any(m == r or m.startswith(f"{r}.") for r in roots))
        roots_top = {m.split(".")[0] for m in project}
        broken = {m: hits for m in checked if (hits := private_imports(m, project | roots_top))}
        return ContractCheck(kept=not broken, metadata={"broken": broken})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for module, hits in sorted(check.metadata["broken"].items()):
            for line, what in hits:
                output.print_error(f"{module}:{line} imports a private name: {what}")
            output.new_line()
