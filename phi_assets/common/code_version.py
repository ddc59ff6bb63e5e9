"""Code versions computed from what an asset's logic imports, so they cannot go stale.

``code_version(__name__, "my_asset")`` hashes the source an asset's output depends on:

- in the module that defines the asset, the top-level definitions its function (or the factory that makes
  it) uses, followed name by name: helpers, config classes and constants, not the other assets of the
  module, and not decorators (descriptions, tags and dependencies are wiring, not logic);
- every project module those definitions import, whole, with its own imports followed transitively (the
  import closure inside the repository, lazy imports inside functions included);
- where a followed name lives in another module that defines assets, only that name's definitions (as in
  the asset's own module), so an upstream asset's code versions its own output, not this one;
- the files a followed module declares with a literal ``VERSIONED_FILES = ("prompts/*.md", ...)`` (globs
  relative to the module), such as prompt templates.

Modules whose source cannot change an output declare it with ``VERSION_EXEMPT = "why"`` and are left out
(plots, Markdown tables, metadata formatting, pod placement). The analysis reads source files only (``ast``),
so it runs at import time; every computed version is kept in ``REGISTRY`` with the modules and files it
covers, which ``tests/test_code_versions.py`` checks against an independent import graph, and on disk for
the next process with the same sources (``CACHE_ENV``).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("phi_assets", "resources", "jobs", "sensors", "k8s")
ASSET_DECORATORS = frozenset({"asset", "multi_asset", "graph_asset", "graph_multi_asset"})


@dataclass(frozen=True)
class Covered:
    """What one code version hashes: whole modules, (module, top-level name) definitions, and data files."""

    version: str
    module: str  # the asset's module
    entries: tuple[str, ...]  # the asset's top-level definitions there
    modules: frozenset[str]  # project modules included whole
    names: frozenset[tuple[str, str]]  # (module, name) included by definition
    files: frozenset[str]  # data files, relative to the repository


#: every version computed in this process, by version string
REGISTRY: dict[str, Covered] = {}


@functools.cache
def module_file(module: str) -> Path | None:
    """The source file of a project module (a package's ``__init__.py``), None for anything else."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@dataclass(frozen=True)
class Parsed:
    tree: ast.Module
    source: str
    defs: dict[str, list[ast.stmt]]  # top-level name -> the statements that bind it
    bound: dict[str, str]  # name bound by an import -> the module or module.attribute it names
    defines_assets: bool
    exempt: bool
    versioned_files: tuple[str, ...]


@functools.cache
def parse(module: str) -> Parsed:
    path = module_file(module)
    if path is None:
        raise ValueError(f"{module}: not a module of this project ({', '.join(PACKAGES)})")
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, str(path))
    defs: dict[str, list[ast.stmt]] = {}
    bound: dict[str, str] = {}
    exempt, files = False, ()
    for node in tree.body:
        for name in _bound_names(node):
            defs.setdefault(name, []).append(node)
        if isinstance(node, ast.Import | ast.ImportFrom):
            bound.update(_import_bindings(module, path, node))
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            target = node.targets[0].id
            if target == "VERSION_EXEMPT":
                exempt = True
            elif target == "VERSIONED_FILES":
                files = tuple(ast.literal_eval(node.value))
    return Parsed(tree, source, defs, bound, _defines_assets(tree), exempt, files)


def _bound_names(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)]
    if isinstance(node, ast.AnnAssign | ast.AugAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    package = parts if path.name == "__init__.py" else parts[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def _import_bindings(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> dict[str, str]:
    if isinstance(node, ast.Import):
        return {(a.asname or a.name.split(".")[0]): (a.name if a.asname else a.name.split(".")[0])
                for a in node.names}
    base = _absolute(module, path, node)
    return {(a.asname or a.name): f"{base}.{a.name}" for a in node.names if a.name != "*"}


def _defines_assets(tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        target = node.func if isinstance(node, ast.Call) else node
        if isinstance(target, ast.Attribute) and target.attr in ASSET_DECORATORS:
            if isinstance(target.value, ast.Name) and target.value.id in ("dg", "dagster"):
                return True
    return False


@functools.cache
def imported_targets(module: str) -> frozenset[str]:
    """Every dotted name ``module`` imports anywhere in its source (lazy imports included): ``a.b`` for
    ``import a.b``, ``a.b.name`` for ``from a.b import name``."""
    parsed, path = parse(module), module_file(module)
    out = set()
    for node in ast.walk(parsed.tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, path, node)
            out.update(f"{base}.{a.name}" for a in node.names if a.name != "*")
    return frozenset(out)


@functools.cache
def _project_module(dotted: str) -> str | None:
    """The longest prefix of ``dotted`` that is a project module (``a.b.name`` -> ``a.b``)."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if module_file(".".join(parts[:end])) is not None:
            return ".".join(parts[:end])
    return None


@functools.cache
def _local_imports(module: str, name: str) -> frozenset[str]:
    """The dotted names imported inside the top-level definitions of ``name`` (lazy imports in function
    bodies)."""
    out, path = set(), module_file(module)
    for top in parse(module).defs[name]:
        for node in ast.walk(top):
            if node is top:
                continue
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(module, path, node)
                out.update(f"{base}.{a.name}" for a in node.names if a.name != "*")
    return frozenset(out)


@functools.cache
def _referenced(module: str, name: str) -> frozenset[str]:
    """Names the definitions of ``name`` use (the root of every ``a.b.c``), decorators and ``code_version``
    calls left out."""
    seen: set[str] = set()
    stack: list[ast.AST] = list(parse(module).defs[name])
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            children = [c for c in ast.iter_child_nodes(node) if c not in node.decorator_list]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "code_version":
            continue
        else:
            children = list(ast.iter_child_nodes(node))
        if isinstance(node, ast.Name):
            seen.add(node.id)
        stack.extend(children)
    return frozenset(seen)


@functools.cache
def _lines(module: str) -> tuple[str, ...]:
    """The source's lines with their ends, split as ``ast.get_source_segment`` splits them."""
    return tuple(ast._splitlines_no_ff(parse(module).source))  # noqa: SLF001  (once per module, not per node)


def _segment(module: str, node: ast.stmt) -> str:
    """``ast.get_source_segment(source, node)`` without splitting the whole source for every node."""
    lines = _lines(module)
    if node.end_lineno is None or node.end_col_offset is None:
        return ""
    first, last = node.lineno - 1, node.end_lineno - 1
    if first == last:
        return lines[first].encode()[node.col_offset:node.end_col_offset].decode()
    head = lines[first].encode()[node.col_offset:].decode()
    tail = lines[last].encode()[:node.end_col_offset].decode()
    return "".join([head, *lines[first + 1:last], tail])


class Closure:
    """The modules and definitions reachable from some top-level definitions (see the module docstring)."""

    def __init__(self) -> None:
        self.modules: set[str] = set()
        self.names: set[tuple[str, str]] = set()

    def add_names(self, module: str, names: list[str]) -> None:
        parsed = parse(module)
        todo = list(names)
        while todo:
            name = todo.pop()
            if (module, name) in self.names:
                continue
            if name in parsed.defs:
                self.names.add((module, name))
                for used in _referenced(module, name):
                    if used in parsed.defs or used in parsed.bound:
                        todo.append(used)
                for dotted in _local_imports(module, name):  # imports inside the definition
                    self.add_target(dotted)
            elif name in parsed.bound:
                self.names.add((module, name))
                self.add_target(parsed.bound[name])

    def add_target(self, dotted: str) -> None:
        """What an import binds: a module (included whole) or a name in a module."""
        target = _project_module(dotted)
        if target is None:
            return
        name = dotted[len(target) + 1:].split(".")[0]
        if name and name in parse(target).bound:  # a re-export (a package's __init__): follow it
            self.add_target(parse(target).bound[name])
        elif name and parse(target).defines_assets:
            self.add_names(target, [name])
        else:
            self.add_module(target)

    def add_module(self, module: str) -> None:
        if module in self.modules or parse(module).exempt:
            return
        self.modules.add(module)
        for dotted in imported_targets(module):
            self.add_target(dotted)


def clear_caches() -> None:
    """Forget every parsed module (after a source file or ``ROOT`` changed, as tests do)."""
    for cached in (parse, module_file, imported_targets, _project_module, _local_imports, _referenced, _lines,
                   _sources_digest, _cached):
        cached.cache_clear()


def files_of(modules: set[str]) -> set[Path]:
    out = set()
    for module in modules:
        base = module_file(module).parent
        for pattern in parse(module).versioned_files:
            matched = sorted(base.glob(pattern))
            if not matched:
                raise ValueError(f"{module}: VERSIONED_FILES pattern {pattern!r} matches no file")
            out.update(matched)
    return out


# --- the versions on disk ---------------------------------------------------------------------------------
# Every step is a process that imports the definitions and so computes every asset's version: parsing and
# walking the project's sources took ~1.3 s of each ``dagster asset materialize``. A version is a function
# of the project's files alone, so the computed ``Covered`` entries are kept in a file named by a digest of
# every file under PACKAGES (any edit anywhere is another file): the next process with the same sources
# reads them instead. Best effort: an unreadable or unwritable cache only costs the computation.
CACHE_ENV = "PHI_CODE_VERSION_CACHE"  # the cache's folder; default ~/.cache/phi-factory; "off" disables it


@functools.cache
def _sources_digest(root: Path) -> str:
    h = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                h.update(f"{path.relative_to(root)}\n".encode() + path.read_bytes())
    return h.hexdigest()[:24]


def _cache_path() -> Path | None:
    folder = os.environ.get(CACHE_ENV) or str(Path.home() / ".cache" / "phi-factory")
    if folder == "off":
        return None
    return Path(folder) / f"code-versions-{_sources_digest(ROOT)}.json"


@functools.cache
def _cached() -> dict[str, dict]:
    path = _cache_path()
    try:
        return json.loads(path.read_text()) if path is not None and path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _store(key: str, covered: Covered) -> None:
    path = _cache_path()
    if path is None:
        return
    entries = _cached()
    entries[key] = {
        "version": covered.version, "module": covered.module, "entries": list(covered.entries),
        **{k: sorted(getattr(covered, k)) for k in ("modules", "names", "files")},
    }  # fmt: skip
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries))
        os.replace(tmp, path)
    except OSError:
        pass


def code_version(module: str, *entries: str, salt: str = "") -> str:
    """The code version of the asset defined by ``entries`` (its function, or the factory that makes it) in
    ``module``; 12 hex digits. Raises ValueError when an entry is not a top-level definition there."""
    key = json.dumps([module, entries, salt])
    hit = _cached().get(key)
    if hit is not None:
        covered = Covered(
            hit["version"], hit["module"], tuple(hit["entries"]), frozenset(hit["modules"]),
            frozenset(tuple(n) for n in hit["names"]), frozenset(hit["files"]),
        )  # fmt: skip
        REGISTRY[covered.version] = covered
        return covered.version
    version = _computed(module, entries, salt)
    _store(key, REGISTRY[version])
    return version


def _computed(module: str, entries: tuple[str, ...], salt: str) -> str:
    parsed = parse(module)
    missing = [e for e in entries if e not in parsed.defs]
    if not entries or missing:
        raise ValueError(f"{module}: code_version needs top-level definitions of it, not {missing or '()'}")
    closure = Closure()
    closure.add_names(module, list(entries))
    names = {(m, n) for m, n in closure.names if m not in closure.modules}
    files = files_of(closure.modules | {m for m, _ in names})
    h = hashlib.sha256(salt.encode())
    for m in sorted(closure.modules):
        h.update(f"module {m}\n".encode() + module_file(m).read_bytes())
    for m, n in sorted(names):
        source = parse(m)
        text = "\n".join(_segment(m, node) for node in source.defs.get(n, [])) or source.bound.get(n, "")
        h.update(f"name {m}.{n}\n{text}".encode())
    for path in sorted(files):
        h.update(f"file {path.relative_to(ROOT)}\n".encode() + path.read_bytes())
    version = h.hexdigest()[:12]
    REGISTRY[version] = Covered(version, module, tuple(entries), frozenset(closure.modules), frozenset(names),
                                frozenset(str(p.relative_to(ROOT)) for p in files))
    return version
