"""Decontamination: find documents that contain HumanEval or MBPP problems (docs/decontamination.md).

Pass 1, every document: n-gram overlap. Text is normalised (lowercase; tokens ``\w+|[^\w\s]``, so
whitespace, indentation and line breaks do not matter; one kind of quote; no parentheses,
semicolons or backslashes, which formatters add and remove). Each task's prompt, solution and full
code is indexed by its 13-grams (8-grams for components of 8 to 12 tokens; shorter ones are too
generic to be evidence). A document sharing a gram with a task is flagged when the difflib ratio
between the task's tokens and the best-matching window of the document reaches ``min_ngram_ratio``.

Pass 2, code documents: phi-1's embedding and syntax similarity, which catch renamed identifiers.
Documents and task code are split into functions (``ast``; indentation when the code does not
parse) and abstracted (identifiers become ``ID``, literals ``NUM``/``STR``; keywords, builtins,
attribute names and operators stay). A function matches a task function of at least
``min_syntax_tokens`` tokens when the difflib ratio of the streams, counting identifiers only where
they follow one consistent renaming, reaches ``min_syntax_ratio`` and the cosine similarity of their
embeddings reaches ``min_embedding_similarity``. The cheap checks run first (length bounds implied
by the ratio, shared abstracted 5-grams via one sparse product per batch, difflib's upper bounds),
so only the few survivors are embedded.

``Decontaminator.scan`` takes every document at once; ``Decontaminator.scanner`` gives the same result
fed batch by batch (a shard streamed under a memory budget): pass 1 judges each document as it comes,
pass 2 keeps its few survivors and embeds them at the end.

Run: ``python -m phi_assets.common.decontaminate --input FILE --out FLAGGED [--mbpp PATH]
[--text-column text] [--code | --no-code] [--no-embeddings]`` (exit 2 on a user error). Without
``--mbpp``, MBPP is found like everywhere else (``mbpp_source.py``); when it cannot be had, only
HumanEval is checked and the output says so.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from difflib import SequenceMatcher
from functools import cached_property
from typing import Any

import numpy as np
import polars as pl

from phi_assets.common.benchmarks import EvalTask
from phi_assets.common.code_syntax import Function, code_functions
from phi_assets.common.embeddings import Encoder

TOKEN_RE = re.compile(r"\w+|[^\w\s]")
DROPPED = frozenset("();\\")  # tokens a formatter adds or removes (redundant parentheses, separators)
SCHEMA = {"row": pl.Int64, "benchmark": pl.String, "task_id": pl.String, "method": pl.String,
          "score": pl.Float64, "similarity": pl.Float64, "evidence": pl.String}
EVIDENCE_CHARS = 200
Survivor = tuple[int, Function, int, float]  # pass 2: (row, function, task function, syntax ratio)


@dataclass(frozen=True)
class DecontamConfig:
    ngram: int = 13
    min_component_tokens: int = 8  # shorter prompts and solutions are not evidence on their own
    min_ngram_ratio: float = 0.85
    use_embeddings: bool = True
    min_embedding_similarity: float = 0.25
    min_syntax_ratio: float = 0.88
    min_syntax_tokens: int = 40  # shorter functions are too generic to compare by shape: pass 1 only
    syntax_ngram: int = 5  # prefilter: abstracted-token n-grams...
    min_syntax_overlap: float = 0.2  # ...a function must share with a task function (fraction)

    def __post_init__(self) -> None:
        for name in ("ngram", "min_component_tokens", "min_syntax_tokens", "syntax_ngram"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DecontamConfig.{name} must be a positive integer, got {value!r}")
        for name in ("min_ngram_ratio", "min_embedding_similarity", "min_syntax_ratio", "min_syntax_overlap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
                raise ValueError(f"DecontamConfig.{name} must be in (0, 1], got {value!r}")
        if self.min_component_tokens > self.ngram:
            raise ValueError(f"DecontamConfig.min_component_tokens must be <= ngram ({self.ngram}), "
                             f"got {self.min_component_tokens}")


def text_tokens(text: str) -> list[str]:
    """Pass 1's normalisation: lowercase, one kind of quote, no tokens in ``DROPPED``."""
    return [t for t in TOKEN_RE.findall(text.lower().replace('"', "'")) if t not in DROPPED]


def _excerpt(text: str) -> str:
    return " ".join(text.split())[:EVIDENCE_CHARS]


class Decontaminator:
    """Flags documents containing any of ``tasks``; build once, ``scan`` many shards."""

    def __init__(self, tasks: Sequence[EvalTask], config: DecontamConfig = DecontamConfig(),
                 encoder: Encoder | None = None) -> None:
        if not tasks:
            raise ValueError("Decontaminator needs at least one benchmark task")
        self.tasks, self.config = list(tasks), config
        self._encoder = encoder
        self._components: list[tuple[int, list[str]]] = []  # (task index, normalised tokens)
        # gram size -> gram hash -> [(component, offset)]: ``ngram`` tokens, or for components too
        # short to hold one, ``min_component_tokens`` (shorter ones are too generic to be evidence).
        self._index: dict[int, dict[int, list[tuple[int, int]]]] = {}
        for t, task in enumerate(self.tasks):
            seen: set[tuple[str, ...]] = set()
            for text in (task.prompt, task.solution, task.code):
                tokens = text_tokens(text)
                if len(tokens) < config.min_component_tokens or tuple(tokens) in seen:
                    continue
                seen.add(tuple(tokens))
                self._components.append((t, tokens))
                n = config.ngram if len(tokens) >= config.ngram else config.min_component_tokens
                index = self._index.setdefault(n, {})
                for offset in range(len(tokens) - n + 1):
                    entry = (len(self._components) - 1, offset)
                    index.setdefault(hash(tuple(tokens[offset : offset + n])), []).append(entry)
        self._refs = None  # pass 2's task functions, built on the first code scan

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = Encoder()
        return self._encoder

    @cached_property
    def version(self) -> str:
        """Changes with the tasks, the configuration and (when pass 2 is on) the encoder's weights."""
        h = hashlib.sha256(json.dumps(asdict(self.config), sort_keys=True).encode())
        for task in self.tasks:
            h.update(json.dumps([task.benchmark, task.task_id, task.prompt, task.solution]).encode())
        if self.config.use_embeddings:
            h.update(self.encoder.version.encode())
        return h.hexdigest()[:16]

    def scan(self, texts: Sequence[str], *, is_code: bool, desc: str | None = None) -> pl.DataFrame:
        """One row per flagged document (its best match), sorted by ``row``; see ``SCHEMA``."""
        scan = self.scanner(is_code=is_code, desc=desc, total=len(texts))
        scan.add(texts)
        return scan.result()

    def scanner(self, *, is_code: bool, desc: str | None = None, total: int | None = None) -> Scan:
        """``scan`` fed batch by batch, for a shard streamed under a memory budget: ``add`` each batch
        of documents in order, then ``result`` is ``scan`` of all of them at once (``row`` counts from
        the first document added). ``total``: the number of documents, for the progress bars."""
        return Scan(self, is_code=is_code, desc=desc, total=total)

    def _ngram_match(self, text: str) -> dict | None:
        tokens = text_tokens(text)
        votes: dict[int, Counter] = {}
        for n, index in self._index.items():
            for i in range(len(tokens) - n + 1):
                for component, offset in index.get(hash(tuple(tokens[i : i + n])), ()):
                    votes.setdefault(component, Counter())[i - offset] += 1
        found = None
        for component, starts in votes.items():
            task, reference = self._components[component]
            for start, _ in starts.most_common(3):  # the likeliest alignments of the task in the text
                ratio, lo, hi = _window_ratio(reference, tokens, start)
                # Ties go to the longer component: a task whose code contains another task's code.
                key = (ratio, len(reference))
                if ratio >= self.config.min_ngram_ratio and (found is None or key > found["key"]):
                    found = {"task": task, "score": ratio, "span": (lo, hi), "key": key}
        if found is None:
            return None
        lowered = text.lower()
        spans = [m.span() for m in TOKEN_RE.finditer(lowered) if m.group() not in DROPPED]
        text = text if len(text) == len(lowered) else lowered  # offsets are into the lowered text
        lo, hi = found["span"]
        evidence = text[spans[min(lo, len(spans) - 1)][0] : spans[min(hi, len(spans)) - 1][1]]
        task = self.tasks[found["task"]]
        return {"benchmark": task.benchmark, "task_id": task.task_id, "method": "ngram",
                "score": round(found["score"], 4), "similarity": None, "evidence": _excerpt(evidence)}

    def _build_refs(self) -> None:
        """Pass 2's references: every function of every task's full code (split like documents)."""
        self._refs = [(t, fn) for t, task in enumerate(self.tasks) for fn in code_functions(task.code)
                      if len(fn.tokens) >= self.config.min_syntax_tokens]
        k, vocab = self.config.syntax_ngram, {}
        rows = [[vocab.setdefault(g, len(vocab)) for g in _grams(fn.tokens, k)] for _, fn in self._refs]
        self._vocab, self._ref_vectors = vocab, {}
        self._ref_matrix = _binary_matrix(rows, len(vocab)).T.tocsr()
        self._ref_sizes = np.array([max(len(r), 1) for r in rows], dtype=np.float32)
        self._ref_lengths = np.array([len(fn.tokens) for _, fn in self._refs], dtype=np.float32)

    def _function_matches(self, texts: Sequence[str], first: int, bar: Any) -> list[Survivor]:
        """Pass 2's syntax survivors of ``texts`` (rows from ``first``): (row, function, reference, ratio)."""
        if self._refs is None:
            self._build_refs()
        cfg, pending, survivors = self.config, [], []
        # The length guard is on task functions; a document's function only needs to be long enough
        # to reach the ratio threshold against the shortest of them.
        shortest = cfg.min_syntax_tokens * cfg.min_syntax_ratio / (2 - cfg.min_syntax_ratio)
        for row, text in enumerate(texts):
            pending.extend((first + row, fn) for fn in code_functions(text) if len(fn.tokens) >= shortest)
            # each function is judged on its own, so how they are grouped here does not matter
            if len(pending) >= 4096 or row == len(texts) - 1:
                survivors.extend(self._syntax_candidates(pending))
                pending = []
            if bar is not None:
                bar.update(1)
        return survivors

    def _embedding_matches(self, survivors: list[Survivor]) -> list[dict]:
        """Pass 2's matches: the survivors whose embedding is close enough to their task function's."""
        cfg = self.config
        if not survivors:
            return []
        missing = sorted({ref for _, _, ref, _ in survivors} - self._ref_vectors.keys())
        if missing:  # each task function is embedded once per Decontaminator, and only when needed
            vectors = self.encoder.encode([self._refs[ref][1].text for ref in missing])
            self._ref_vectors.update(zip(missing, vectors, strict=True))
        chunks = sorted({fn.text for _, fn, _, _ in survivors})
        vectors = dict(zip(chunks, self.encoder.encode(chunks), strict=True))
        found = []
        for row, fn, ref, ratio in survivors:
            similarity = float(vectors[fn.text] @ self._ref_vectors[ref])
            if similarity >= cfg.min_embedding_similarity:
                task = self.tasks[self._refs[ref][0]]
                found.append({"row": row, "benchmark": task.benchmark, "task_id": task.task_id,
                              "method": "embedding", "score": round(ratio, 4),
                              "similarity": round(similarity, 4), "evidence": _excerpt(fn.text)})
        return found

    def _syntax_candidates(self, pending: list) -> list[Survivor]:
        """(row, function, reference, syntax ratio) for the pending functions that reach
        ``min_syntax_ratio``, checked cheapest first: length bounds and shared abstracted n-grams
        (one sparse product per batch), difflib's upper bounds, the ratio, the renaming check."""
        if not pending:
            return []
        cfg, threshold = self.config, self.config.min_syntax_ratio
        unique = list(dict.fromkeys(fn.tokens for _, fn in pending))  # identical streams once
        rows = [[self._vocab[g] for g in _grams(t, cfg.syntax_ngram) if g in self._vocab] for t in unique]
        shared = (_binary_matrix(rows, len(self._vocab)) @ self._ref_matrix).toarray()
        # A ratio of T needs lengths within a factor (2 - T) / T: a bound that loses nothing.
        bound = (2 - threshold) / threshold
        length = np.array([len(t) for t in unique], dtype=np.float32)[:, None] / self._ref_lengths[None, :]
        mask = (shared / self._ref_sizes >= cfg.min_syntax_overlap) & (length <= bound) & (length * bound >= 1)
        aligned: dict[int, list[tuple[int, list]]] = {}  # unique stream -> [(reference, matching blocks)]
        for ref in np.unique(np.nonzero(mask)[1]):
            matcher = SequenceMatcher(None, autojunk=False)
            matcher.set_seq2(self._refs[ref][1].tokens)  # difflib caches its analysis of this side
            for u in np.nonzero(mask[:, ref])[0]:
                matcher.set_seq1(unique[u])
                if (matcher.real_quick_ratio() >= threshold and matcher.quick_ratio() >= threshold
                        and matcher.ratio() >= threshold):
                    aligned.setdefault(int(u), []).append((int(ref), matcher.get_matching_blocks()))
        position = {tokens: u for u, tokens in enumerate(unique)}
        out = []
        for row, fn in pending:
            for ref, blocks in aligned.get(position[fn.tokens], ()):
                if (ratio := _renaming_ratio(fn, self._refs[ref][1], blocks)) >= threshold:
                    out.append((row, fn, ref, ratio))
        return out


class Scan:
    """A scan in progress (``Decontaminator.scanner``). Pass 1 judges each document as it is added;
    pass 2 keeps the few functions that pass its syntax checks and embeds them all at the end, in one
    call as ``scan`` does, so the result does not depend on how the documents were split."""

    def __init__(self, owner: Decontaminator, *, is_code: bool, desc: str | None, total: int | None) -> None:
        self.owner = owner
        self.embeddings = is_code and owner.config.use_embeddings
        self.rows = 0  # documents added
        self.best: dict[int, dict] = {}
        self.survivors: list[Survivor] = []  # pass 2's, awaiting their embeddings
        self.bars = {name: _bar(desc and f"{desc} ({name})", total)
                     for name in ("n-grams", "functions") if name == "n-grams" or self.embeddings}

    def _offer(self, found: dict) -> None:
        current = self.best.get(found["row"])
        # Verbatim evidence (pass 1) wins ties: it is the easier one for a reviewer to check.
        if current is None or found["score"] > current["score"]:
            self.best[found["row"]] = found

    def add(self, texts: Sequence[str]) -> None:
        texts = [text if isinstance(text, str) else "" for text in texts]  # a null document matches nothing
        bar = self.bars["n-grams"]
        for row, text in enumerate(texts, self.rows):
            if (found := self.owner._ngram_match(text)) is not None:
                self._offer({"row": row, **found})
            if bar is not None:
                bar.update(1)
        if self.embeddings:
            self.survivors += self.owner._function_matches(texts, self.rows, self.bars["functions"])
        self.rows += len(texts)

    def result(self) -> pl.DataFrame:
        """One row per flagged document (its best match), sorted by ``row``; see ``SCHEMA``."""
        for bar in self.bars.values():
            if bar is not None:
                bar.close()
        for found in self.owner._embedding_matches(self.survivors):
            self._offer(found)
        rows = [self.best[row] for row in sorted(self.best)]
        return pl.DataFrame(rows, schema=SCHEMA) if rows else pl.DataFrame(schema=SCHEMA)


def _window_ratio(reference: list[str], tokens: list[str], start: int) -> tuple[float, int, int]:
    """The difflib ratio of ``reference`` against the document window it aligns with at ``start``:
    a slack on each side absorbs insertions and deletions, then the window is trimmed to the span
    the matching blocks cover (blocks of one or two tokens at the edges are chance matches)."""
    slack = max(len(reference) // 4, 8)
    lo, hi = max(start - slack, 0), min(start + len(reference) + slack, len(tokens))
    matcher = SequenceMatcher(None, tokens[lo:hi], reference, autojunk=False)
    blocks = [b for b in matcher.get_matching_blocks() if b.size >= 3] or matcher.get_matching_blocks()[:-1]
    if not blocks:
        return 0.0, lo, lo
    lo, hi = lo + blocks[0].a, lo + blocks[-1].a + blocks[-1].size
    return SequenceMatcher(None, tokens[lo:hi], reference, autojunk=False).ratio(), lo, hi


def _bar(desc: str | None, total: int | None) -> Any:
    """A tqdm progress bar of documents, or None without ``desc``."""
    if not desc:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="doc")


def _renaming_ratio(fn: Function, ref: Function, blocks: Sequence) -> float:
    """The difflib ratio with aligned identifiers counted as matches only where they follow one
    consistent renaming (each name maps to one name, both ways): a renamed copy keeps its score,
    while unrelated code of the same shape, whose data flow differs, loses some."""
    matched, pairs = 0, []
    for i, j, size in blocks:
        matched += size
        pairs.extend((fn.names[i + k], ref.names[j + k]) for k in range(size) if fn.names[i + k] is not None)
    forward: dict[str, Counter] = {}
    backward: dict[str, Counter] = {}
    for mine, theirs in pairs:
        forward.setdefault(mine, Counter())[theirs] += 1
        backward.setdefault(theirs, Counter())[mine] += 1
    consistent = min(sum(max(c.values()) for c in side.values()) for side in (forward, backward))
    return 2 * (matched - len(pairs) + consistent) / (len(fn.tokens) + len(ref.tokens))


def _grams(tokens: Sequence[str], k: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + k]) for i in range(len(tokens) - k + 1)}


def _binary_matrix(rows: list[list[int]], width: int):
    from scipy import sparse

    indptr = np.cumsum([0] + [len(r) for r in rows])
    indices = np.fromiter((c for r in rows for c in r), dtype=np.int64, count=int(indptr[-1]))
    data = np.ones(len(indices), dtype=np.float32)
    return sparse.csr_matrix((data, indices, indptr), shape=(len(rows), width))


# ---- command line ----------------------------------------------------------------------------------

def read_documents(path: str, column: str) -> pl.DataFrame:
    """A parquet or JSONL (.jsonl, .jsonl.gz) file with a string column ``column``."""
    import gzip
    import os

    if not os.path.isfile(path):
        raise ValueError(f"{path}: input file not found")
    try:
        if path.endswith(".parquet"):
            frame = pl.read_parquet(path)
        elif path.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rb") as f:
                frame = pl.read_ndjson(io.BytesIO(f.read()))
        else:
            raise ValueError(f"{path}: unknown input format (expected .parquet, .jsonl or .jsonl.gz)")
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise ValueError(f"{path}: unreadable ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if column not in frame.columns:
        raise ValueError(f"{path}: no column {column!r} (columns: {', '.join(frame.columns) or 'none'})")
    return frame.with_columns(pl.col(column).cast(pl.String).fill_null(""))


def write_atomically(frame: pl.DataFrame, path: str) -> None:
    import gzip
    import os

    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        if path.endswith(".parquet"):
            frame.write_parquet(tmp)
        else:
            with (gzip.open if path.endswith(".gz") else open)(tmp, "wb") as f:
                frame.write_ndjson(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def looks_like_code(texts: Sequence[str], sample: int = 200) -> bool:
    """Most of a sample of non-empty documents parse as Python."""
    docs = [t for t in texts if t.strip()][:sample]
    parsed = 0
    for text in docs:
        try:
            ast.parse(text)
            parsed += 1
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            pass
    return bool(docs) and parsed * 2 > len(docs)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import sys

    from phi_assets.common.benchmarks import load_eval_tasks
    from phi_assets.common.mbpp_source import MBPPUnavailable, resolve_mbpp

    parser = argparse.ArgumentParser(prog="python -m phi_assets.common.decontaminate", description=__doc__
                                     .split("\n")[0])
    parser.add_argument("--input", required=True, help="parquet or JSONL (.jsonl, .jsonl.gz) documents")
    parser.add_argument("--out", required=True, help="flagged rows: .parquet, .jsonl or .jsonl.gz")
    parser.add_argument("--mbpp", help="MBPP's mbpp.jsonl (default: $PHI_MBPP_PATH, else the copy downloaded "
                        "from the Hugging Face Hub; with neither, HumanEval only)")
    parser.add_argument("--text-column", default="text")
    code = parser.add_mutually_exclusive_group()
    code.add_argument("--code", dest="code", action="store_true", default=None,
                      help="documents are Python: also run pass 2 (default: when most of them parse)")
    code.add_argument("--no-code", dest="code", action="store_false")
    parser.add_argument("--no-embeddings", action="store_true", help="pass 1 only")
    args = parser.parse_args(argv)
    try:
        if not args.out.endswith((".parquet", ".jsonl", ".jsonl.gz")):
            raise ValueError(f"{args.out}: unknown output format (use .parquet, .jsonl or .jsonl.gz)")
        unavailable = None
        try:
            mbpp = args.mbpp or resolve_mbpp()
        except MBPPUnavailable as exc:  # a configured path that is missing stays an error (exit 2)
            mbpp, unavailable = None, exc
        tasks = load_eval_tasks(mbpp)
        frame = read_documents(args.input, args.text_column)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if unavailable is not None:
        print(f"MBPP NOT CHECKED, checking HumanEval only: {unavailable} (or pass --mbpp PATH)")
    texts = frame[args.text_column].to_list()
    is_code = looks_like_code(texts) if args.code is None else args.code
    config = DecontamConfig(use_embeddings=not args.no_embeddings)
    print(f"{len(texts)} documents read from {args.input}; {len(tasks)} tasks; "
          f"{'code: n-grams + embeddings' if is_code and config.use_embeddings else 'n-grams only'}")
    flags = Decontaminator(tasks, config).scan(texts, is_code=is_code, desc="decontaminate")
    counts = flags.group_by("benchmark", "method").len().sort("benchmark", "method")
    for benchmark, method, count in counts.rows():
        print(f"flagged {benchmark} by {method}: {count}")
    print(f"flagged {flags.height} of {len(texts)} documents")
    extra = flags.select("benchmark", "task_id", "method", "score", "similarity", "evidence")
    # Never overwrite an input column: clashing names get a prefix.
    extra = extra.rename({c: f"decontam_{c}" for c in extra.columns if c in frame.columns})
    out = pl.concat([frame[flags["row"].to_list()], extra], how="horizontal")
    write_atomically(out, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
