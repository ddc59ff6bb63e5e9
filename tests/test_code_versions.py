"""Code versions cannot go stale: every asset's code version is computed from what its logic imports
(``phi_assets.common.code_version``, which reads source files), checked here against an independent view
of the same code at run time: the functions' bytecode (which globals they read, what their imports bind)
and the imported modules' globals, followed transitively."""

from __future__ import annotations

import dis
import importlib
import sys
import textwrap
import types

import pytest

from phi_assets.common import code_version as cv
from phi_assets.definitions import defs


def _assets():
    graph = defs.resolve_asset_graph()
    out = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        assets_def = graph.get(key).assets_def
        fn = assets_def.op.compute_fn.decorated_fn
        out[key.to_user_string()] = (assets_def.code_versions_by_key[key], fn)
    return out


ASSETS = _assets()


def _is_project(module: str | None) -> bool:
    return bool(module) and module.split(".")[0] in cv.PACKAGES


def _code_objects(code: types.CodeType):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _functions_of(obj, seen: frozenset = frozenset()) -> list[types.FunctionType]:
    """A function, or a class's functions (its nested classes' too, each once: torch's autograd Functions
    hold classes that point back at them)."""
    if isinstance(obj, types.FunctionType):
        return [obj]
    if isinstance(obj, type) and obj not in seen:
        return [f for v in vars(obj).values() for f in _functions_of(getattr(v, "__func__", v), seen | {obj})
                if isinstance(f, types.FunctionType)]
    return []


def _lazy_imports(instructions: list[dis.Instruction]) -> list[object]:
    """What the ``import`` statements inside a function bind, resolved at run time: the named module for
    ``import a.b``, each name for ``from a.b import name``."""
    out = []
    for i, ins in enumerate(instructions):
        if ins.opname != "IMPORT_NAME" or not _is_project(ins.argval):
            continue
        module = importlib.import_module(ins.argval)
        names = []
        for later in instructions[i + 1:]:
            if later.opname == "IMPORT_FROM":
                names.append(later.argval)
            elif not later.opname.startswith("STORE_"):
                break
        out += [_bound(module, n) for n in names] if names else [module]
    return out


def _bound(module: types.ModuleType, name: str) -> object:
    """What ``from module import name`` binds: an attribute, or a submodule not imported yet."""
    try:
        return getattr(module, name)
    except AttributeError:
        return importlib.import_module(f"{module.__name__}.{name}")


def _used_objects(fn: types.FunctionType) -> list[object]:
    """The globals a function's bytecode (nested functions included) loads, and what its imports bind."""
    out = []
    for code in _code_objects(fn.__code__):
        instructions = list(dis.get_instructions(code))
        loaded = {i.argval for i in instructions if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
        out += [fn.__globals__[name] for name in sorted(loaded) if name in fn.__globals__]
        out += _lazy_imports(instructions)
    return out


def _home(value) -> str | None:
    """The project module an object comes from: a module itself, or where a function or class is defined."""
    if isinstance(value, types.ModuleType):
        return value.__name__ if _is_project(value.__name__) else None
    home = getattr(value, "__module__", None)
    return home if _is_project(home) and _functions_of(value) else None


def used_at_run_time(top) -> tuple[set[str], set[tuple[str, str]]]:
    """From a top-level function's bytecode (nested functions included), following the functions and
    classes it uses in its own module and in other modules that define assets: the other project
    modules it uses (as modules, or through functions and classes defined in them) and the
    (module, name) definitions it uses in modules that define assets."""
    modules: set[str] = set()
    names: set[tuple[str, str]] = set()
    seen: set[int] = set()
    todo = [top]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        for fn in _functions_of(obj):
            for value in _used_objects(fn):
                home = _home(value)
                if home is None:
                    continue
                if not isinstance(value, types.ModuleType) and (
                        home == top.__module__ or cv.parse(home).defines_assets):
                    names.add((home, value.__qualname__.split(".")[0]))
                    todo.append(value)
                else:
                    modules.add(home)
    return modules, names


def module_uses(module: str) -> set[str]:
    """The project modules a module uses at run time: its globals' homes and its functions' imports."""
    loaded = importlib.import_module(module)
    # a package's submodules are attributes of it once imported anywhere: not a use by the package
    values = [v for v in vars(loaded).values()
              if not (isinstance(v, types.ModuleType) and v.__name__.startswith(f"{module}."))]
    for value in list(values):
        for fn in _functions_of(value):
            if fn.__module__ == module:
                values += _used_objects(fn)
    return {home for value in values if (home := _home(value)) and home != module}


def reachable(modules: set[str]) -> set[str]:
    """The run-time closure of ``modules``, not entering version-exempt modules, nor modules that define
    assets (their definitions are followed name by name, by ``used_at_run_time``)."""
    out, todo = set(), list(modules)
    while todo:
        module = todo.pop()
        if module in out or cv.parse(module).exempt or cv.parse(module).defines_assets:
            continue
        out.add(module)
        todo += module_uses(module)
    return out


def logic_of(fn):
    """The asset's function, or for one made by a factory (``factory.<locals>._asset``), the factory."""
    top = fn.__qualname__.split(".")[0]
    return fn if top == fn.__qualname__ else getattr(sys.modules[fn.__module__], top)


def missing_from(covered: cv.Covered, fn) -> list[str]:
    """What the asset's logic reaches that its code version does not cover."""
    modules, names = used_at_run_time(logic_of(fn))
    out = sorted(reachable(modules) - covered.modules)
    for home, name in sorted(names):
        if home not in covered.modules and (home, name) not in covered.names:
            out.append(f"{home}.{name}")
    return out


@pytest.mark.parametrize("asset", sorted(ASSETS))
def test_code_version_is_computed_from_the_assets_own_logic(asset):
    version, fn = ASSETS[asset]
    covered = cv.REGISTRY.get(version)
    assert covered is not None, f"{asset}: code version {version} was not computed by code_version()"
    assert covered.module == fn.__module__, f"{asset}: computed for {covered.module}, not {fn.__module__}"
    assert fn.__qualname__.split(".")[0] in covered.entries


@pytest.mark.parametrize("asset", sorted(ASSETS))
def test_every_module_the_logic_reaches_is_in_the_version(asset):
    version, fn = ASSETS[asset]
    assert missing_from(cv.REGISTRY[version], fn) == []


def test_a_module_dropped_from_a_version_is_found():
    """The check above fails when a logic module is left out of a version: drop each module the first
    checkpoint's logic reaches, one at a time."""
    version, fn = ASSETS["pretrained_checkpoint"]
    covered = cv.REGISTRY[version]
    modules, _ = used_at_run_time(logic_of(fn))
    logic = sorted(reachable(modules))
    assert "phi_assets.training.trainer" in logic and "phi_assets.training.model" in logic
    for module in logic:
        dropped = cv.Covered(**{**covered.__dict__, "modules": covered.modules - {module}})
        assert missing_from(dropped, fn) == [module]


def test_formatting_modules_are_left_out():
    version, _ = ASSETS["pretrained_checkpoint"]
    covered = cv.REGISTRY[version]
    assert not {m for m in covered.modules if cv.parse(m).exempt}
    assert "phi_assets.common.plots" not in covered.modules


def _write(root, files: dict[str, str]):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).strip("\n") + "\n")


PACKAGE = {
    "phi_assets/__init__.py": "",
    "phi_assets/stage.py": '''
        import dagster as dg
        from phi_assets import helper, tables

        LIMIT = 3

        @dg.asset(description="first")
        def first():
            return tables.render(helper.work(LIMIT))

        @dg.asset
        def second():
            return 2
    ''',
    "phi_assets/helper.py": '''
        VERSIONED_FILES = ("prompts/*.md",)

        def work(n):
            from phi_assets import deep
            return deep.f(n)
    ''',
    "phi_assets/deep.py": "def f(n):\n    return n + 1",
    "phi_assets/tables.py": 'VERSION_EXEMPT = "formatting"\n\ndef render(x):\n    return str(x)',
    "phi_assets/prompts/ask.md": "Ask {question}",
}


@pytest.mark.parametrize(
    ("edit", "changes"),
    [
        ({"phi_assets/deep.py": "def f(n):\n    return n + 2"}, True),  # a lazy import, two levels down
        ({"phi_assets/prompts/ask.md": "Ask politely {question}"}, True),  # a declared prompt file
        ({"phi_assets/stage.py": PACKAGE["phi_assets/stage.py"].replace("LIMIT = 3", "LIMIT = 4")}, True),
        ({"phi_assets/tables.py": PACKAGE["phi_assets/tables.py"].replace("str(x)", "repr(x)")}, False),
        ({"phi_assets/stage.py": PACKAGE["phi_assets/stage.py"].replace("return 2", "return 3")}, False),
        ({"phi_assets/stage.py": PACKAGE["phi_assets/stage.py"].replace('"first"', '"the first"')}, False),
    ],
    ids=["lazy-import", "prompt-file", "constant", "exempt-module", "other-asset", "decorator"],
)
def test_what_changes_a_version(tmp_path, monkeypatch, edit, changes):
    """With the versions cached on disk, as every step process reads them: an edit is a new cache."""
    monkeypatch.setenv(cv.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(cv, "ROOT", tmp_path)
    monkeypatch.setattr(cv, "REGISTRY", {})
    _write(tmp_path, PACKAGE)
    cv.clear_caches()
    before = cv.code_version("phi_assets.stage", "first")
    assert cv.REGISTRY[before].modules == {"phi_assets.helper", "phi_assets.deep"}
    assert cv.REGISTRY[before].files == {"phi_assets/prompts/ask.md"}
    _write(tmp_path, edit)
    cv.clear_caches()
    try:
        after = cv.code_version("phi_assets.stage", "first")
    finally:
        cv.clear_caches()
    assert (after != before) is changes


def test_a_cached_version_is_the_computed_one_and_a_bad_cache_is_ignored(tmp_path, monkeypatch):
    """The next process with the same sources reads the version and what it covers from the cache (it
    parses nothing); a corrupt cache file is computed around; "off" reads and writes nothing."""
    monkeypatch.setenv(cv.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(cv, "ROOT", tmp_path / "src")
    monkeypatch.setattr(cv, "REGISTRY", {})
    _write(tmp_path / "src", PACKAGE)
    cv.clear_caches()
    try:
        computed = cv.code_version("phi_assets.stage", "first")
        covered = cv.REGISTRY[computed]
        (cache,) = (tmp_path / "cache").iterdir()
        cv.clear_caches()
        monkeypatch.setattr(cv, "REGISTRY", {})
        monkeypatch.setattr(cv, "parse", None)  # a cache hit must not parse
        assert cv.code_version("phi_assets.stage", "first") == computed and cv.REGISTRY[computed] == covered
        monkeypatch.undo()
        monkeypatch.setenv(cv.CACHE_ENV, str(tmp_path / "cache"))
        monkeypatch.setattr(cv, "ROOT", tmp_path / "src")
        monkeypatch.setattr(cv, "REGISTRY", {})
        cache.write_text("{not json")
        cv.clear_caches()
        assert cv.code_version("phi_assets.stage", "first") == computed
        monkeypatch.setenv(cv.CACHE_ENV, "off")
        cache.unlink()
        cv.clear_caches()
        assert cv.code_version("phi_assets.stage", "first") == computed
        assert not list((tmp_path / "cache").iterdir())
    finally:
        cv.clear_caches()


def test_an_unknown_entry_is_an_error():
    with pytest.raises(ValueError, match="no_such_asset"):
        cv.code_version("phi_assets.common.store", "no_such_asset")


def test_the_exempt_modules_are_the_formatting_ones():
    """Exempting a module leaves it out of every version: the list is reviewed here, so a logic module
    cannot drop out of its assets' versions by a marker alone."""
    modules = [".".join(f.relative_to(cv.ROOT).with_suffix("").parts).removesuffix(".__init__")
               for p in cv.PACKAGES for f in (cv.ROOT / p).rglob("*.py")]
    exempt = {m for m in modules if cv.parse(m).exempt}
    assert exempt == {
        "phi_assets.common.plots",
        "phi_assets.common.tables",
        "phi_assets.common.automation",
        "phi_assets.curation.metadata",
        "phi_assets.evaluation.table1",
        "k8s.steps",
    }
