"""Decontamination against HumanEval and MBPP: planted problems are found, stdlib code is not.

The shard plants 14 benchmark problems four ways (verbatim with CRLF line breaks inside other code;
as an exercise in prose; reformatted by ``ast.unparse`` and re-indented; renamed identifiers with
docstrings dropped, so only pass 2 can see them) next to the sources of 47 standard-library
modules. MBPP comes from ``shared/data/mbpp/mbpp.jsonl`` beside the repository
(or ``PHI_MBPP_PATH``); without it these tests fail rather than skip. The command runs offline
(``HF_HUB_OFFLINE=1``); where it finds MBPP without ``--mbpp`` is tests/test_mbpp_source.py's subject.
"""

from __future__ import annotations

import ast
import builtins
import gzip
import importlib
import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from phi_assets.common.benchmarks import EvalTask, load_eval_tasks, load_humaneval, load_mbpp
from phi_assets.common.code_syntax import code_functions
from phi_assets.common.decontaminate import SCHEMA, DecontamConfig, Decontaminator
from phi_assets.common.embeddings import Encoder

ROOT = Path(__file__).resolve().parents[1]
HUMANEVAL_IDS = ["HumanEval/0", "HumanEval/12", "HumanEval/26", "HumanEval/37", "HumanEval/109",
                 "HumanEval/129", "HumanEval/147"]
MBPP_IDS = ["mbpp/1", "mbpp/11", "mbpp/57", "mbpp/123", "mbpp/160", "mbpp/306", "mbpp/580"]
STDLIB = ["textwrap", "heapq", "bisect", "statistics", "fractions", "colorsys", "calendar", "string",
          "shlex", "glob", "fnmatch", "difflib", "json.encoder", "json.decoder", "base64", "quopri", "csv",
          "configparser", "gettext", "ipaddress", "pprint", "reprlib", "graphlib", "queue", "sched",
          "secrets", "random", "copy", "dataclasses", "functools", "operator", "contextlib", "numbers",
          "tokenize", "linecache", "traceback", "html", "html.parser", "stat", "struct", "_pydecimal",
          "collections", "typing", "enum", "inspect", "ast", "argparse"]
BEFORE = '''import os


def data_dir(*parts):
    """Where the fixtures live."""
    return os.path.join(os.path.dirname(__file__), "data", *parts)


'''
AFTER = '''


class Report:
    def __init__(self, rows):
        self.rows = list(rows)

    def render(self):
        return "\\n".join(str(row) for row in self.rows)
'''


@pytest.fixture(scope="module")
def tasks(mbpp_path: Path) -> list[EvalTask]:
    return load_eval_tasks(mbpp_path)


@pytest.fixture(scope="module")
def by_id(tasks: list[EvalTask]) -> dict[str, EvalTask]:
    return {t.task_id: t for t in tasks}


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder()


@pytest.fixture(scope="module")
def decontaminator(tasks: list[EvalTask], encoder: Encoder) -> Decontaminator:
    return Decontaminator(tasks, encoder=encoder)


class Renamer(ast.NodeTransformer):
    """Renames every non-builtin variable, argument and function, and drops docstrings."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def new(self, name: str, prefix: str) -> str:
        if hasattr(builtins, name):
            return name
        return self.names.setdefault(name, f"{prefix}{len(self.names)}")

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        node.name = self.new(node.name, "routine_")
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            node.body = body[1:] or [ast.Pass()]
        self.generic_visit(node)
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        node.id = self.new(node.id, "v")
        return node

    def visit_arg(self, node: ast.arg) -> ast.AST:
        node.arg = self.new(node.arg, "a")
        self.generic_visit(node)
        return node


def reformat(code: str) -> str:
    """Normalised by ``ast.unparse``, then re-indented by two spaces and with blank lines doubled."""
    lines = ast.unparse(ast.parse(code)).splitlines()
    out = []
    for line in lines:
        stripped = line.lstrip(" ")
        out.append(" " * ((len(line) - len(stripped)) // 2) + stripped.replace(", ", ","))
    return "\n\n".join(out) + "\n"


def rename(code: str) -> str:
    return ast.unparse(Renamer().visit(ast.parse(code)))


def in_class(code: str) -> str:
    return "class Toolbox:\n" + textwrap.indent(code, "    ") + "\n"


@pytest.fixture(scope="module")
def shard(by_id: dict[str, EvalTask]) -> tuple[list[str], dict[int, str]]:
    return build_shard(by_id)


def build_shard(by_id: dict[str, EvalTask]) -> tuple[list[str], dict[int, str]]:
    """Documents and, for the planted ones, the task id each one must be flagged with (planted
    variants come in fours: verbatim, in prose, reformatted, renamed without docstrings)."""
    docs, expected = [], {}
    for task_id in HUMANEVAL_IDS + MBPP_IDS:
        task = by_id[task_id]
        planted = [
            BEFORE + task.code.replace("\n", "\r\n") + AFTER,  # verbatim (MBPP's own line breaks)
            f"## Exercise\n\n{textwrap.fill(task.prompt, 50)}\n\nSolution:\n\n```python\n{task.solution}```\n",
            BEFORE + reformat(task.code) + AFTER,
            BEFORE + in_class(rename(task.code)) + AFTER,
        ]
        for doc in planted:
            expected[len(docs)] = task_id
            docs.append(doc)
    for name in STDLIB:
        docs.append(inspect.getsource(importlib.import_module(name)))
    return docs, expected


@pytest.fixture(scope="module")
def flagged(decontaminator: Decontaminator, shard) -> pl.DataFrame:
    docs, _ = shard
    return decontaminator.scan(docs, is_code=True)


@pytest.mark.slow  # decontaminates 47 stdlib modules with embeddings (the module's ``flagged``)
def test_planted_problems_are_flagged_with_their_task(flagged: pl.DataFrame, shard) -> None:
    docs, expected = shard
    got = dict(zip(flagged["row"].to_list(), flagged["task_id"].to_list(), strict=True))
    missed = {row: task for row, task in expected.items() if got.get(row) != task}
    assert not missed, f"not flagged (or wrong task): {missed}; flagged: {flagged}"
    renamed = flagged.filter(pl.col("row").is_in([r for r in expected if r % 4 == 3]))
    assert set(renamed["method"]) == {"embedding"}  # docstrings gone: only pass 2 sees them
    assert renamed["similarity"].min() >= DecontamConfig().min_embedding_similarity


def test_short_generic_functions_are_left_to_pass_1(decontaminator: Decontaminator, by_id) -> None:
    # strlen is `return len(string)`: renamed, its shape is that of countless ordinary functions.
    renamed = BEFORE + rename(by_id["HumanEval/23"].code) + AFTER
    assert decontaminator.scan([renamed], is_code=True).is_empty()
    assert decontaminator.scan([BEFORE + by_id["HumanEval/23"].code], is_code=True)["task_id"].to_list() == [
        "HumanEval/23"]


@pytest.mark.slow  # the module's ``flagged``: 47 stdlib modules decontaminated with embeddings
def test_stdlib_modules_are_not_flagged(flagged: pl.DataFrame, shard) -> None:
    docs, expected = shard
    false = flagged.filter(~pl.col("row").is_in(list(expected)))
    assert false.is_empty(), f"stdlib flagged: {false.to_dicts()}"
    assert len(docs) - len(expected) >= 40


@pytest.mark.slow  # the module's ``flagged``: 47 stdlib modules decontaminated with embeddings
def test_scan_rows_schema_and_evidence(decontaminator: Decontaminator, flagged: pl.DataFrame, by_id) -> None:
    assert flagged.schema == pl.Schema(SCHEMA)
    assert flagged["row"].is_sorted() and flagged["row"].n_unique() == flagged.height
    assert flagged["evidence"].str.len_chars().max() <= 200
    ngram = flagged.filter(pl.col("method") == "ngram")
    assert ngram["similarity"].null_count() == ngram.height
    assert ngram["score"].min() >= DecontamConfig().min_ngram_ratio
    empty = decontaminator.scan([], is_code=True)
    assert empty.is_empty() and empty.schema == pl.Schema(SCHEMA)
    prose = decontaminator.scan(["nothing to see", by_id["HumanEval/0"].prompt], is_code=False)
    assert prose.select("row", "task_id", "method").rows() == [(1, "HumanEval/0", "ngram")]


def test_function_chunks_with_and_without_ast() -> None:
    code = "def outer(x):\n    def inner(y):\n        return y + 1\n    return inner(x)\n"
    assert [fn.text.split("(")[0] for fn in code_functions(code)] == ["def outer", "    def inner"]
    broken = "print 'py2'\n" + code + "def tail(:\n    pass\n"  # does not parse
    names = [fn.text.strip().split("(")[0] for fn in code_functions(broken)]
    assert names == ["def outer", "def inner", "def tail"]
    outer = code_functions(code)[0]
    assert outer.tokens[:6] == ("def", "ID", "(", "ID", ")", ":") and "return" in outer.tokens
    assert [n for n in outer.names if n] == ["outer", "x", "inner", "y", "y", "inner", "x"]


def test_version_follows_tasks_config_and_encoder(tasks, encoder: Encoder, decontaminator) -> None:
    same = Decontaminator(tasks, encoder=encoder)
    assert same.version == decontaminator.version
    assert Decontaminator(tasks[:-1], encoder=encoder).version != decontaminator.version
    assert Decontaminator(tasks, DecontamConfig(min_syntax_ratio=0.9), encoder).version != same.version
    assert len(encoder.version) == 16 and int(encoder.version, 16) >= 0


def test_encoder(encoder: Encoder, tmp_path: Path) -> None:
    vectors = encoder.encode(["def add(a, b): return a + b", "a recipe for bread"], desc="test")
    assert vectors.dtype == np.float32 and vectors.shape == (2, encoder.dim) == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, rtol=1e-5)
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(ValueError, match="modules.json"):
        Encoder(tmp_path)
    with pytest.raises(ValueError, match="not found"):
        Encoder(tmp_path / "absent")


@pytest.mark.parametrize(
    ("field", "value"),
    [("ngram", 0), ("min_ngram_ratio", 0), ("min_ngram_ratio", 1.5), ("min_embedding_similarity", -0.1),
     ("min_syntax_ratio", "high"), ("min_syntax_tokens", 2.5), ("syntax_ngram", True),
     ("min_component_tokens", 14)],
)
def test_config_validation(field: str, value) -> None:
    with pytest.raises(ValueError, match=f"DecontamConfig.{field}"):
        DecontamConfig(**{field: value})


def test_loaders(mbpp_path: Path, tmp_path: Path) -> None:
    humaneval = load_humaneval()
    assert len(humaneval) == 164 and humaneval[0].task_id == "HumanEval/0"
    assert humaneval[0].code == humaneval[0].prompt + humaneval[0].solution
    mbpp = load_mbpp(mbpp_path)
    assert len(mbpp) == 974 and mbpp[0].task_id == "mbpp/1" and "\r" not in mbpp[0].solution
    with pytest.raises(ValueError, match="not found"):
        load_mbpp(tmp_path / "absent.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": 1, "text": "t", "code": "c"}) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2:"):
        load_mbpp(bad)
    bad.write_text(json.dumps({"task_id": 1, "text": "t"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*code"):
        load_mbpp(bad)
    assert load_eval_tasks(None) == humaneval


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "phi_assets.common.decontaminate", *args], cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
                          capture_output=True, text=True, timeout=300)


def cli_docs(by_id: dict[str, EvalTask]) -> pl.DataFrame:
    texts = [inspect.getsource(textwrap), BEFORE + by_id["HumanEval/12"].code + AFTER,
             BEFORE + in_class(rename(by_id["mbpp/57"].code)) + AFTER, BEFORE + AFTER]
    return pl.DataFrame({"id": ["a", "b", "c", "d"], "text": texts})


@pytest.mark.slow  # the command with the encoder, in a child process
def test_cli_parquet_with_embeddings(tmp_path: Path, mbpp_path: Path, by_id) -> None:
    cli_docs(by_id).with_columns(score=pl.lit(0.5)).write_parquet(tmp_path / "docs.parquet")
    out = tmp_path / "flagged.parquet"
    result = cli("--input", str(tmp_path / "docs.parquet"), "--out", str(out), "--mbpp", str(mbpp_path))
    assert result.returncode == 0, result.stderr
    assert "4 documents read" in result.stdout and "flagged 2 of 4 documents" in result.stdout
    assert "flagged mbpp by embedding: 1" in result.stdout
    flagged = pl.read_parquet(out)
    assert flagged.select("id", "task_id", "method").rows() == [
        ("b", "HumanEval/12", "ngram"), ("c", "mbpp/57", "embedding")]
    assert {"text", "benchmark", "score", "decontam_score", "similarity", "evidence"} <= set(flagged.columns)
    assert flagged["score"].to_list() == [0.5, 0.5]  # the input's own column is kept
    assert not list(tmp_path.glob("*.tmp-*"))


def test_cli_jsonl_humaneval_only(tmp_path: Path, by_id) -> None:
    docs = tmp_path / "docs.jsonl.gz"
    with gzip.open(docs, "wt") as f:
        f.write(cli_docs(by_id).write_ndjson())
    out = tmp_path / "flagged.jsonl"
    # no MBPP configured, none cached in an empty home, offline: HumanEval only, and it says how to add MBPP
    no_mbpp = {"PHI_MBPP_PATH": "", "PHI_HOME": str(tmp_path / "phi")}
    result = cli("--input", str(docs), "--out", str(out), "--no-embeddings", env=no_mbpp)
    assert result.returncode == 0, result.stderr
    assert "MBPP NOT CHECKED" in result.stdout and "n-grams only" in result.stdout
    assert "164 tasks" in result.stdout
    assert "set PHI_MBPP_PATH" in result.stdout and "unset HF_HUB_OFFLINE" in result.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["task_id"], r["method"]) for r in rows] == [("b", "HumanEval/12", "ngram")]


@pytest.mark.slow  # the command, once per error, each a child process
def test_cli_user_errors(tmp_path: Path) -> None:
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"body": "x"}\n')
    # whatever the caller's environment and home hold: HumanEval only
    no_mbpp = {"PHI_MBPP_PATH": "", "PHI_HOME": str(tmp_path / "phi")}
    result = cli("--input", str(docs), "--out", str(tmp_path / "f.jsonl"), "--no-embeddings", env=no_mbpp)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert str(docs) in result.stderr and "no column 'text'" in result.stderr
    (tmp_path / "junk.parquet").write_text("not parquet")
    result = cli("--input", str(tmp_path / "junk.parquet"), "--out", str(tmp_path / "f.jsonl"), env=no_mbpp)
    assert result.returncode == 2 and "junk.parquet: unreadable" in result.stderr
    result = cli("--input", str(docs), "--out", str(tmp_path / "f.jsonl"), "--mbpp", str(tmp_path / "no.jsonl"))
    assert result.returncode == 2 and "MBPP file not found" in result.stderr
    # a configured PHI_MBPP_PATH that is missing is an error too, not a silent HumanEval-only scan
    result = cli("--input", str(docs), "--out", str(tmp_path / "f.jsonl"),
                 env={"PHI_MBPP_PATH": str(tmp_path / "no.jsonl")})
    assert result.returncode == 2 and f"{tmp_path / 'no.jsonl'}: MBPP file not found" in result.stderr
    assert not (tmp_path / "f.jsonl").exists()
