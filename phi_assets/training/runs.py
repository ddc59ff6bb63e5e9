"""Launching a training run and recording what it produced: what every checkpoint asset shares.

A training asset (``pretraining.py``, ``post_training.py``) derives its ``TrainConfig`` from a recipe
(``recipe_config``) or from its parent's, and hands it with the entrypoint's inputs to
``train_and_record``: that writes the entrypoint's config (``phi_assets.training.entrypoint``), starts
it through the ``training_launcher`` resource (Dagster Pipes: a subprocess on local/ci, a Kubernetes
Job or PyTorchJob on k8s) unless this exact run is already stored, and records the run.

The run directory is keyed by the work's provenance (code version and inputs), so a retried step
resumes from the run's last checkpoint. A version holds the Hugging Face export (``hf/``: config,
safetensors, tokenizer, and a first Hugging Face card ``README.md``: ``write_export_card``; transformers
and vLLM load it), ``metrics.jsonl`` and ``summary.json``; its
data version is the sha256 of the weights. Metadata: the loss curve, final and validation losses,
tokens seen, wall time, tokens/s, MFU and lineage: the parent versions the asset names, plus
``recipe``: ``{"name": the recipe the asset's config chose (midtraining: "midtrain(<pretraining
recipe>)"), "config": the full TrainConfig the run used}``.
"""

import json
import math
import shutil
import time
from pathlib import Path

import dagster as dg

from phi_assets.common import hf_card, plots
from phi_assets.common.model_files import file_sha256
from phi_assets.common.store import current, file_uri, local_copy
from phi_assets.common.versioning import Built, materialize_versioned, stable_hash
from phi_assets.mixture.token_assets import TOKENIZER_SUBDIR
from phi_assets.training import configs
from resources import ArtifactStore
from resources.training import TrainingLauncher

HF = "hf"


# --- inputs ---------------------------------------------------------------------------------------


def stored_input(store: ArtifactStore, manifest: dict, sub: str) -> str:
    """Where the training process reads a stored directory: a local path, or the store's URI (the
    entrypoint copies it once into its run directory)."""
    if store.is_local:
        return str(local_copy(store, manifest, sub))
    return file_uri(store, manifest, sub)


def parent_checkpoint(store: ArtifactStore, asset: str) -> tuple[dict, str]:
    """The current version of a checkpoint asset, and where the entrypoint reads its export."""
    manifest = current(store, asset)
    return manifest, stored_input(store, manifest, HF)


def current_tokenizer(store: ArtifactStore) -> tuple[dict, str]:
    manifest = current(store, "tokenizer")
    return manifest, stored_input(store, manifest, TOKENIZER_SUBDIR)


# --- configs --------------------------------------------------------------------------------------


def recipe_config(name: str, overrides: dict) -> configs.TrainConfig:
    if name not in configs.TRAIN_RECIPES:
        raise dg.Failure(description=f"recipe {name!r} is not one of {sorted(configs.TRAIN_RECIPES)}")
    base = configs.TRAIN_RECIPES[name]()
    return configs.TrainConfig(**{**base.__dict__, **overrides})


def steps_for(tokens: float, cfg: configs.TrainConfig) -> int:
    return max(1, math.ceil(tokens / cfg.tokens_per_step))


# --- launching and recording a run --------------------------------------------------------------


def train_and_record(
    context: dg.AssetExecutionContext,
    store: ArtifactStore,
    launcher: TrainingLauncher,
    *,
    code_version: str,
    stage: str,
    spec: dict,
    cfg: configs.TrainConfig,
    recipe: str,
    inputs: dict,
    lineage: dict,
    write_inputs=None,
) -> dg.MaterializeResult:
    """Launch the entrypoint for ``spec`` (unless this exact run is already stored) and record it;
    the lineage gets the ``recipe`` name and the config used beside the versions the asset names.
    ``code_version``: the calling asset's (``phi_assets.common.code_version``)."""
    asset = context.asset_key.to_user_string()
    key = stable_hash([code_version, inputs], 16)
    lineage = with_recipe(lineage, recipe, cfg)

    def build(out: Path) -> Built:
        return run_and_record(context, store, launcher, asset, key, {**spec, "stage": stage}, cfg, out, lineage,
                              write_inputs)

    outcome = materialize_versioned(context, store, code_version=code_version, inputs=inputs, build=build)
    return materialization(store, outcome, stage, inputs["train"])


def with_recipe(lineage: dict, recipe: str, cfg: configs.TrainConfig) -> dict:
    """``lineage`` with the recipe the asset's config chose and the full TrainConfig the run used."""
    return {**lineage, "recipe": {"name": recipe, "config": dict(cfg.__dict__)}}


def run_and_record(
    context: dg.AssetExecutionContext,
    store: ArtifactStore,
    launcher: TrainingLauncher,
    asset: str,
    key: str,
    spec: dict,
    cfg: configs.TrainConfig,
    out: Path,
    lineage: dict,
    write_inputs=None,
) -> Built:
    """``launch_run`` into ``out``, then the export's card and the stored version of the run."""
    messages, wall = launch_run(context, store, launcher, asset, key, spec, cfg, out, write_inputs)
    write_export_card(out, asset, lineage)
    return recorded(out, messages, wall, lineage)


def launch_run(
    context: dg.AssetExecutionContext,
    store: ArtifactStore,
    launcher: TrainingLauncher,
    asset: str,
    key: str,
    spec: dict,
    cfg: configs.TrainConfig,
    out: Path,
    write_inputs=None,
) -> tuple[list[dict], float]:
    """One run of the entrypoint for ``spec`` (its inputs and ``stage``) under ``_runs/<asset>/<key>``,
    through the launcher; its ``hf/``, ``metrics.jsonl`` and ``summary.json`` end up in ``out``. (the
    launcher's messages, the wall time)."""
    # The code the launched process runs (the trainer, the model, the loader...): imported here, when a
    # run is built, not when the code location loads (torch), and named so that it is part of every
    # training asset's code version (phi_assets.common.code_version follows imports inside functions).
    from phi_assets.training import entrypoint

    runs = f"{store.base_path}/_runs/{asset}/{key}"  # the config and, on a cluster, the published result
    work = launcher.work_dir(asset, key)  # checkpoints: local disk, or the cluster's checkpoint volume
    context.log.info(f"{asset}: launching {entrypoint.__name__} ({spec['stage']}, {cfg.max_steps} steps)")
    config = {**spec, "train": cfg.__dict__, "out": f"{work}/run"}
    if write_inputs is not None:
        config.update(write_inputs(runs))
    if not store.is_local:
        config["publish"] = store.uri(f"{runs}/result")
    store.write_json(f"{runs}/config.json", config)  # atomic
    started = time.perf_counter()
    messages = launcher.run(context, store.uri(f"{runs}/config.json"), f"{asset}-{key}")
    wall = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    if store.is_local:
        shutil.copytree(Path(work) / "run" / HF, out / HF)
        for name in ("metrics.jsonl", "summary.json"):
            shutil.copyfile(Path(work) / "run" / name, out / name)
    else:
        store.fs.get(f"{runs}/result/", str(out), recursive=True)
    return messages, wall


def write_export_card(out: Path, asset: str, lineage: dict) -> None:
    """The export's first Hugging Face card, ``hf/README.md`` (``phi_assets.common.hf_card``): licence, base
    model, the data versions the lineage names and the recipe, so every export loads with
    ``huggingface_hub.ModelCard.load``. The data version is the weights' digest alone, which it leaves as is."""
    summary = json.loads((out / "summary.json").read_text())
    hf_card.write_card(hf_card.export_card(asset, lineage, summary), out / HF / hf_card.README)


def metric_rows(run: Path) -> list[dict]:
    """A run's ``metrics.jsonl``, one row per step in order (a resumed run logs the steps after its
    checkpoint again: the last row of a step counts)."""
    rows = {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    return [rows[s] for s in sorted(rows)]


def recorded(out: Path, messages: list[dict], wall: float, lineage: dict) -> Built:
    """The stored version of a finished run in ``out``: the weights' digest and the run's numbers."""
    digest = file_sha256(out / HF / "model.safetensors")  # streamed: the weights never sit in memory
    rows = metric_rows(out)
    summary = json.loads((out / "summary.json").read_text())

    def median(name: str) -> float:
        return sorted(r[name] for r in rows)[len(rows) // 2]

    return Built(
        digest[:32],
        {
            "loss": [r["loss"] for r in rows],
            "lr": [r["lr"] for r in rows],
            "tokens": summary["tokens"],
            "steps": summary["steps"],
            "num_params": summary["num_params"],
            "tokens_per_s": median("tokens_per_s"),
            "mfu": median("mfu"),
            "wall_s": round(wall, 1),
            "step_messages": sum(1 for m in messages if m.get("kind") == "step"),
            "summary": summary,
            "lineage": lineage,
        },
    )


def materialization(store: ArtifactStore, outcome, stage: str, train: dict) -> dg.MaterializeResult:
    meta = outcome.metadata
    summary = meta["summary"]
    series = {"train": meta["loss"]}
    tenth = max(1, len(meta["loss"]) // 10)
    extra: dict = {}
    for label in ("val_loss", "parent_val_loss"):
        for length, value in summary.get(label, {}).items():
            extra[f"{label}_{length}"] = float(value)
    if "preference_accuracy" in summary:
        extra["preference_accuracy"] = float(summary["preference_accuracy"])
    if "router" in summary:  # mixture of experts: the experts' load over the run (dropless: nothing dropped)
        extra["router_stats"] = dg.MetadataValue.json(summary["router"])
    return dg.MaterializeResult(
        data_version=dg.DataVersion(outcome.data_version),
        metadata={
            "first_loss": _mean_loss(meta["loss"][:tenth]),  # single steps are noisy: means of a tenth
            "final_loss": final_loss(meta["loss"]),
            **extra,
            "tokens_seen": meta["tokens"],  # steps x seq_len x global batch: all ranks together
            "steps": meta["steps"],
            # a run recorded before batches were global has none of these
            **{k: summary[k] for k in ("global_batch_size", "world_size", "sequences_seen") if k in summary},
            "num_params": meta["num_params"],
            "tokens_per_s": meta["tokens_per_s"],
            "mfu": meta["mfu"],
            "wall_time_s": meta["wall_s"],
            "loss_curve": plots.line_plot(series, f"{stage} loss", "step", "loss"),
            "train_config": dg.MetadataValue.json(train),
            "lineage": dg.MetadataValue.json(meta["lineage"]),
            "path": store.uri(
                f"{store.version_path(outcome.manifest['asset'], None, outcome.data_version)}/{HF}"
            ),
            "skipped": outcome.skipped,
        },
    )


def final_loss(losses: list[float]) -> float:
    """A run's final loss: the mean of its last tenth of steps (single steps are noisy)."""
    return _mean_loss(losses[-max(1, len(losses) // 10):])


def _mean_loss(values: list[float]) -> float:
    return float(sum(values) / len(values))
