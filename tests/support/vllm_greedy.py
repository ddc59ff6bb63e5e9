"""Greedy tokens from vLLM's offline engine for several model directories, from one child process.

``python -m tests.support.vllm_greedy OUT`` imports vLLM, then reads engines from stdin, one JSON object a
line, until EOF: ``{"model_dir", "max_model_len", "prompts": [[token id, ...], ...], "max_tokens": n or
[n per prompt], "logprobs": k (optional), "hf_overrides": {...} (optional)}``. It creates one ``vllm.LLM``
per line, one after another in this process, each shut down and freed before the next: float32, eager (no
torch.compile), no tokenizer (prompts are token ids, ``TokensPrompt``), engine core in this process. Each
generates greedily (temperature 0, eos ignored) for all its prompts in one batch. ``OUT`` gets
``{"vllm": version, "engines": [...]}``, one entry per engine, rewritten after each: ``{"tokens": [[id, ...]
per prompt], "logprobs": [[[[id, logprob] for ranks 1..k] per position] per prompt], "begun_s", "start_s",
"generate_s", "shutdown_s"}``, with ``"error": traceback`` instead of the tokens where the engine failed.

A test drives it with ``greedy_engines(work_dir)``: the child starts importing vLLM (~13 s) at once,
engines are sent (``submit``) as the test has them, so the test's own work (exports, transformers
references) overlaps vLLM's, and ``results()`` waits for them all. The environment is the one vLLM's CPU
build wants here (``VLLMSettings.child_env``: 1 GiB KV cache, Intel OpenMP preloaded).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class GreedyEngines:
    """The driver child, started; ``submit`` engines to it, then ``results()``."""

    def __init__(self, work_dir: Path):
        from resources.llm.vllm_backend import VLLMSettings

        work_dir.mkdir(parents=True, exist_ok=True)
        self.out, self.log = work_dir / "out.json", work_dir / "vllm.log"
        self.submitted = 0
        env = VLLMSettings(cpu_kvcache_gib=1).child_env() | {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
        root = Path(__file__).resolve().parents[2]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
        self.started = time.monotonic()
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.vllm_greedy", str(self.out)],
                cwd=root,
                env=env,
                stdin=subprocess.PIPE,
                stdout=sink,
                stderr=subprocess.STDOUT,
                text=True,
            )

    def submit(self, engine: dict[str, Any]) -> int:
        """Queue ``engine`` (a line of the job); its index in the results."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(engine) + "\n")
        self.proc.stdin.flush()
        self.submitted += 1
        return self.submitted - 1

    def results(self, timeout_s: float = 600) -> dict[str, Any]:
        """Every submitted engine's results once the child is done; its log in the assertion if it failed."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            rc: int | str = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            rc = "killed after timeout"
            self.stop()
        log = self.log.read_text(errors="replace")[-6000:]
        assert rc == 0 and self.out.is_file(), f"vLLM driver exited with {rc}; its log ends:\n{log}"
        results = json.loads(self.out.read_text())
        assert len(results["engines"]) == self.submitted, f"{self.submitted} engines sent, results:\n{log}"
        return {**results, "wall_s": round(time.monotonic() - self.started, 1)}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def greedy_engines(work_dir: Path) -> Iterator[GreedyEngines]:
    """The driver child for a ``with`` block, killed if the block fails before ``results()``."""
    engines = GreedyEngines(work_dir)
    try:
        yield engines
    finally:
        engines.stop()


# -- the child -----------------------------------------------------------------------------------
def _engine(entry: dict[str, Any]) -> dict[str, Any]:
    """One engine's greedy tokens; the engine shut down and freed before returning (also when it failed:
    the traceback, which holds it, is dropped first, so that nothing of it is left to tear down the next
    engine's state later)."""
    result: dict[str, Any] = {"begun_s": round(time.monotonic() - _T0, 2)}  # since the child started
    llm = None
    try:
        llm = _generate(entry, result)
    except Exception:
        result |= {"error": traceback.format_exc()}
    t = time.monotonic()
    if llm is not None:
        # The engine core's shutdown releases the model runner, which clears vLLM's process-wide cache of
        # rotary embeddings (``_ROPE_DICT``), and the distributed state. Without it the next engine of the same
        # shape reuses this one's rotary embedding: a LongRoPE one built for max_model_len 128 (short factors
        # at every position) served a max_model_len 256 engine.
        llm.llm_engine.engine_core.shutdown()
        del llm
    else:
        _free()
    gc.freeze()  # what survives (vLLM, torch) is left out of the next engine's many gc.collect() calls
    return result | {"shutdown_s": round(time.monotonic() - t, 2)}


def _generate(entry: dict[str, Any], result: dict[str, Any]) -> Any:
    from vllm import LLM

    t0 = time.monotonic()
    llm = LLM(
        model=entry["model_dir"],
        dtype="float32",
        max_model_len=entry["max_model_len"],
        enforce_eager=True,
        skip_tokenizer_init=True,
        seed=0,
        hf_overrides=entry.get("hf_overrides"),
    )
    started = time.monotonic()
    try:
        _complete(llm, entry, result)
    except Exception:
        llm.llm_engine.engine_core.shutdown()  # as _engine does after a success; then re-raised for it
        raise
    result["start_s"] = round(started - t0, 2)
    result["generate_s"] = round(time.monotonic() - started, 2)
    return llm


def _complete(llm: Any, entry: dict[str, Any], result: dict[str, Any]) -> None:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    max_tokens = entry["max_tokens"]
    params = [
        SamplingParams(
            temperature=0.0, max_tokens=n, ignore_eos=True, detokenize=False, logprobs=entry.get("logprobs")
        )
        for n in (max_tokens if isinstance(max_tokens, list) else [max_tokens] * len(entry["prompts"]))
    ]
    outputs = llm.generate(
        [TokensPrompt(prompt_token_ids=ids) for ids in entry["prompts"]], params, use_tqdm=False
    )
    result["tokens"] = [list(o.outputs[0].token_ids) for o in outputs]
    if entry.get("logprobs"):
        result["logprobs"] = [_top(o.outputs[0].logprobs, entry["logprobs"]) for o in outputs]


def _top(positions: Any, k: int) -> list[list[list[float]]]:
    """vLLM's per-position ``{token id: Logprob}`` as ``[[id, logprob], ...]``, ranks 1..k in order."""
    return [
        [[t, lp.logprob] for t, lp in sorted(pos.items(), key=lambda item: item[1].rank) if lp.rank <= k]
        for pos in positions or []
    ]


def _free() -> None:
    """What an engine that failed to start may have left: cached rotary embeddings, distributed state."""
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
    from vllm.model_executor.layers.rotary_embedding import _ROPE_DICT

    _ROPE_DICT.clear()
    gc.unfreeze()  # the engine froze what it had allocated by then (EngineCore.__init__)
    gc.collect()
    cleanup_dist_env_and_memory()


def main(out_path: Path) -> None:
    import vllm
    from vllm import LLM  # noqa: F401  (imported before the first engine arrives: ~13 s of the start)
    from vllm.model_executor.models import registry
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        # vLLM inspects a model class in a fresh interpreter (to keep CUDA out of this one) unless its
        # ~/.cache/vllm/modelinfos entry exists: ~12 s per architecture on a cold cache. On CPU there is no
        # CUDA to keep out, and the engine imports the same class right after: inspected here.
        registry._run_in_subprocess = lambda fn: fn()
    gc.freeze()
    print(f"vllm_greedy: vLLM imported in {time.monotonic() - _T0:.1f} s", flush=True)
    results: list[dict[str, Any]] = []
    for line in sys.stdin:
        if line.strip():
            results.append(_engine(json.loads(line)))
            out_path.write_text(json.dumps({"vllm": vllm.__version__, "engines": results}))
    if not results:
        out_path.write_text(json.dumps({"vllm": vllm.__version__, "engines": results}))


_T0 = time.monotonic()

if __name__ == "__main__":
    main(Path(sys.argv[1]))
