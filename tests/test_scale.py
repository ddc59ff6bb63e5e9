"""Where vs how big: ``PHI_PROFILE`` picks the place, ``PHI_SCALE`` the size preset (docs/scale.md)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from phi_assets.common.profiles import DEFAULT_SCALE, SCALES, Sizes, load_profile
from phi_assets.training import model as phi
from phi_assets.training import trainer

ROOT = Path(__file__).resolve().parents[1]
K8S = {"PHI_PROFILE": "k8s", "PHI_ARTIFACT_ROOT": "s3://b/a", "PHI_LANDING_ROOT": "s3://b/l"}


@pytest.mark.parametrize(("env", "scale"), [
    ({}, "demo"),
    ({"PHI_PROFILE": "ci"}, "ci"),
    (K8S, "phi1"),
    ({**K8S, "PHI_SCALE": "demo"}, "demo"),
    ({"PHI_PROFILE": "local", "PHI_SCALE": "phi1"}, "phi1"),
])
def test_each_profile_has_a_default_scale_and_phi_scale_overrides_it(env, scale):
    profile = load_profile(env)
    assert profile.scale == scale and profile.sizes == SCALES[scale]
    assert profile.name == (env.get("PHI_PROFILE") or "local")  # where stays where


def test_unknown_scale_is_a_clear_error():
    expected = r"PHI_SCALE='huge' is not a scale preset; choose one of \('ci', 'demo', 'phi1'\)"
    with pytest.raises(ValueError, match=expected):
        load_profile({"PHI_SCALE": "huge"})


def test_every_profile_default_names_a_preset():
    assert set(DEFAULT_SCALE) == {"local", "ci", "k8s"} and set(DEFAULT_SCALE.values()) <= set(SCALES)


@pytest.mark.parametrize("name", sorted(SCALES))
def test_preset_recipes_exist_and_match_the_preset_context(name):
    sizes = SCALES[name]
    for recipe in (sizes.pretrain_recipe, sizes.finetune_recipe, sizes.dpo_recipe):
        assert recipe in trainer.TRAIN_RECIPES, f"{name}: {recipe}"
    pretrain = trainer.TRAIN_RECIPES[sizes.pretrain_recipe]()
    if name == "phi1":  # the paper's run: its model and context, not the CPU debug shape
        assert pretrain.model == "phi1" and pretrain.seq_len == sizes.train_seq_len == 2048
        assert phi.RECIPES["phi1"]().num_layers == 24


def test_phi1_token_budget_is_the_papers_steps_times_batch():
    """phi-1 §2.3: the released checkpoint is the one after 24,000 steps of 1,024 x 2,048 tokens."""
    pretrain = trainer.TRAIN_RECIPES[SCALES["phi1"].pretrain_recipe]()
    assert pretrain.global_batch_size == 1024  # sequences per optimizer step, whatever the world size
    assert SCALES["phi1"].token_budget == 24_000 * pretrain.tokens_per_step == 24_000 * 1024 * 2048


def test_sizes_reject_non_positive_numbers_and_empty_recipes():
    with pytest.raises(ValueError, match="Sizes.mixture_proxies must be >= 1"):
        Sizes(mixture_proxies=0)
    with pytest.raises(ValueError, match="Sizes.pretrain_recipe must name a recipe"):
        Sizes(pretrain_recipe="")


def test_embedded_fingerprint_ignores_sizes_that_do_not_select_the_embedded_corpora():
    """A bigger token budget must not re-version the raw shards (and everything after them)."""
    from phi_assets.ingest.embedded import embedded_fingerprint

    demo = SCALES["demo"]
    same = dataclasses.replace(demo, token_budget=demo.token_budget * 10, pretrain_recipe="phi1_pretrain")
    other = dataclasses.replace(demo, web_sample_every=2)
    key = "embedded:pydoc-topics"
    assert embedded_fingerprint("web", key, demo) == embedded_fingerprint("web", key, same)
    assert embedded_fingerprint("web", key, demo) != embedded_fingerprint("web", key, other)


def _partition_counts(env: dict[str, str]) -> dict[str, int]:
    code = ("import json, dagster as dg; from phi_assets.definitions import defs; "
            "g = defs.resolve_asset_graph(); "
            "print(json.dumps({k: len(g.get(dg.AssetKey(k)).partitions_def.get_partition_keys()) "
            "for k in ('synthetic_textbooks', 'rewritten_web', 'mixture_proxies')}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # two child processes load the code location
def test_partition_sets_follow_the_preset_without_a_code_change(tmp_path):
    env = {"PHI_HOME": str(tmp_path), "DAGSTER_HOME": str(tmp_path / "dagster")}
    small = _partition_counts({**env, "PHI_PROFILE": "local", "PHI_SCALE": "ci"})
    roots = {"PHI_ARTIFACT_ROOT": f"{tmp_path}/a", "PHI_LANDING_ROOT": f"{tmp_path}/l"}
    big = _partition_counts({**env, **K8S, **roots})
    ci, phi1 = SCALES["ci"], SCALES["phi1"]
    assert small == {"synthetic_textbooks": ci.synthetic_batches, "rewritten_web": ci.synthetic_batches,
                     "mixture_proxies": ci.mixture_proxies}
    assert big == {"synthetic_textbooks": phi1.synthetic_batches, "rewritten_web": phi1.synthetic_batches,
                   "mixture_proxies": phi1.mixture_proxies}


def test_docs_scale_table_matches_the_presets():
    """docs/scale.md lists every Sizes field with its value in each preset, and a source for phi1's."""
    text = (ROOT / "docs" / "scale.md").read_text().split("## The presets")[1].split("\n## ")[0]
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and cells[0].startswith("`") and cells[0].endswith("`"):
            rows[cells[0].strip("`")] = cells
    names = [f.name for f in dataclasses.fields(Sizes)]
    assert sorted(rows) == sorted(names)
    for name in names:
        _, ci, demo, phi1, source = rows[name][:5]
        for cell, preset in ((ci, "ci"), (demo, "demo"), (phi1, "phi1")):
            value = getattr(SCALES[preset], name)
            shown = re.sub(r"[`, ]", "", cell) if isinstance(value, int) else cell.strip("`")
            assert shown == str(value), f"{name} {preset}: doc {cell!r}, code {value!r}"
        if getattr(SCALES["phi1"], name) != getattr(SCALES["demo"], name):
            assert source, f"{name}: the phi1 value needs a source in docs/scale.md"


def test_k8s_deployment_pods_carry_the_scale():
    from k8s.deploy import get_profile

    env = get_profile("a100x8").env()
    assert env["PHI_SCALE"] == "phi1" and env["PHI_PROFILE"] == "k8s"
    assert load_profile({**env, "PHI_HOME": "/tmp/x"}).sizes == SCALES["phi1"]


@pytest.mark.parametrize("name", sorted(SCALES))
def test_the_reference_gets_the_full_evaluation_and_checkpoints_what_the_preset_says(name, mbpp_path, tmp_path):
    """The demo preset shortens the trained checkpoints' evaluation (the first N problems, no judge) but
    never the reference model's; phi1 evaluates every stage on everything; the metadata says what was left
    out."""
    from phi_assets.evaluation.assets import EvalConfig, _problems, _reduced, _understanding_on
    from resources import DecontaminationResource

    profile = load_profile({"PHI_PROFILE": "local", "PHI_SCALE": name, "PHI_HOME": str(tmp_path)})
    sizes, config = profile.sizes, EvalConfig()
    decontamination = DecontaminationResource(mbpp_path=str(mbpp_path))
    reference, totals = _problems(config, profile, decontamination, "reference")
    checkpoint, _ = _problems(config, profile, decontamination, "sft")
    assert totals == {"humaneval": 164, "mbpp": 500}
    for benchmark, total in totals.items():
        assert len(reference[benchmark]) == min(sizes.eval_problems, total)
        assert len(checkpoint[benchmark]) == min(sizes.checkpoint_eval_problems, total)
        assert checkpoint[benchmark] == reference[benchmark][: len(checkpoint[benchmark])]  # the first N
    assert _understanding_on(config, profile, "reference")
    assert _understanding_on(config, profile, "sft") == sizes.grade_checkpoints
    meta = {"benchmark_sizes": totals, "scores": {b: {"problems": len(ps)} for b, ps in checkpoint.items()}}
    if sizes.grade_checkpoints:
        meta["understanding"] = {}
    reduced = _reduced(meta)
    if name == "phi1":
        assert reduced == "none"
    if name == "demo":
        n = sizes.checkpoint_eval_problems
        assert reduced == (f"first {n} of 164 humaneval problems; first {n} of 500 mbpp problems; "
                           "understanding not graded")
    # an explicit config wins over the preset, for every stage
    assert len(_problems(EvalConfig(problems=3), profile, decontamination, "reference")[0]["mbpp"]) == 3
    assert not _understanding_on(EvalConfig(understanding="off"), profile, "reference")
    assert _understanding_on(EvalConfig(understanding="on"), profile, "sft")


def test_sizes_flags_are_booleans_not_counts():
    assert Sizes(grade_checkpoints=False).grade_checkpoints is False  # a False flag is not "< 1"
    with pytest.raises(ValueError, match="Sizes.checkpoint_eval_problems must be >= 1"):
        Sizes(checkpoint_eval_problems=0)


def test_reductions_name_every_size_smaller_than_phi1():
    """What the demo prints under "Reduced at scale": every field below phi1's, a flag turned off, another
    recipe; nothing for phi1 itself, and nothing for a field at or above phi1's."""
    from phi_assets.common.profiles import reductions

    assert reductions(SCALES["phi1"]) == []
    demo = dict((name, (here, there)) for name, here, there in reductions(SCALES["demo"]))
    assert demo["checkpoint_eval_problems"] == (SCALES["demo"].checkpoint_eval_problems, 1000)
    assert demo["grade_checkpoints"] == (False, True)
    assert demo["pretrain_recipe"] == ("debug", "phi1_pretrain")
    assert "max_doc_bytes" not in demo and "eval_problems" not in demo  # the same as phi1's
    bigger = dataclasses.replace(SCALES["phi1"], mixture_proxies=1024)
    assert reductions(bigger) == []
