"""A push-ready folder per trained stage: the checkpoint's Hugging Face export with its evaluated card.

``assemble`` builds, for a stage (``pretrained``, ``midtrained``, ``sft``, ``dpo``), a directory holding
every file of the checkpoint's ``hf/`` export (config, safetensors, tokenizer) and ``model_card``'s
``README.md`` of that stage (in place of the export's first card), ready for
``huggingface_hub.upload_folder``. It publishes the checkpoint version the card describes (the one
``eval_scores`` evaluated), read from the artifact store. Files are hard links into a local store
(versions are immutable; nothing here edits a file in place) or copies when linking is not possible
(another filesystem, a remote store). The folder is written under a temporary name and renamed into place,
so a killed run never leaves a half folder under the destination's name.

Run it with the deployment's environment (``PHI_PROFILE``, ``PHI_HOME`` or ``PHI_ARTIFACT_ROOT``)::

    python -m phi_assets.evaluation.publish dpo out/phi-factory-dpo              # build the folder only
    python -m phi_assets.evaluation.publish dpo out/phi-factory-dpo --push me/phi-factory-dpo \
        [--base-model me/phi-factory-sft] [--dataset me/phi-factory-data ...] [--private]

``--push`` uploads the folder with ``upload_folder`` (a token from ``HF_TOKEN`` or ``hf auth login``). The
Hub accepts only its own repository ids as ``base_model`` and ``datasets``; the card's local identifiers
(``phi-factory/sft@<version>``) are replaced by ``--base-model``/``--dataset`` or left out of the pushed
front matter (the body still names them).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import dagster as dg
from huggingface_hub import ModelCard

from phi_assets.common import hf_card
from phi_assets.common.profiles import load_profile
from phi_assets.common.store import current, version_dir
from phi_assets.evaluation.card_facts import CARD_STAGES
from phi_assets.evaluation.model_card import CARD_ASSET
from resources import ArtifactStore

HF = "hf"  # the export's folder in a checkpoint version (phi_assets.training.runs)


def _place(store: ArtifactStore, source: str, target: Path) -> None:
    """``target`` holds the stored file ``source``: a hard link into a local store, else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if store.is_local:
        try:
            os.link(source, target)
            return
        except OSError:  # another filesystem, or links not allowed: copy
            shutil.copyfile(source, target)
            return
    store.fs.get_file(source, str(target))


def _swap_in(built: Path, dest: Path, overwrite: bool) -> None:
    """Rename ``built`` to ``dest``; an existing ``dest`` is replaced only with ``overwrite``."""
    if not dest.exists():
        os.rename(built, dest)
        return
    if not overwrite:
        shutil.rmtree(built)
        raise FileExistsError(f"{dest} already exists; remove it, choose another folder or pass --overwrite")
    old = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.old")
    os.rename(dest, old)
    os.rename(built, dest)
    shutil.rmtree(old)


def assemble(store: ArtifactStore, stage: str, dest: str | Path, overwrite: bool = False) -> Path:
    """Build the push-ready folder of ``stage`` at ``dest`` (the export's files plus ``README.md``) and
    return it. Fails naming the input when the card or the checkpoint version it describes is missing."""
    if stage not in CARD_STAGES:
        raise ValueError(f"stage {stage!r} has no model card; choose one of {sorted(CARD_STAGES)}")
    card = current(
        store, CARD_ASSET, stage, f"materialize {CARD_ASSET} partition {stage} first", reader="publish"
    )
    asset, version = CARD_STAGES[stage], card["metadata"]["checkpoint_version"]
    if hf_card.README not in card.get("files", {}):
        raise dg.Failure(
            description=f"publish: {CARD_ASSET}[{stage}] version {card['data_version']} has no "
            f"{hf_card.README} (written before Hugging Face cards); materialize {CARD_ASSET} partition "
            f"{stage} again"
        )
    checkpoint = store.read_manifest(asset, None, version)
    if checkpoint is None:
        raise dg.Failure(
            description=f"publish: {CARD_ASSET}[{stage}] describes {asset} version {version}, which is not in "
            "the artifact store (garbage-collected?); train and evaluate the stage again"
        )
    prefix = f"{HF}/"
    names = sorted(n[len(prefix) :] for n in checkpoint.get("files", {}) if n.startswith(prefix))
    if "model.safetensors" not in names:
        raise dg.Failure(description=f"publish: {asset} version {version} has no {HF}/model.safetensors")
    dest = Path(dest).resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    built = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.partial")
    built.mkdir()
    try:
        for name in names:
            if name != hf_card.README:  # the export's first card gives way to the evaluated one
                _place(store, f"{version_dir(store, checkpoint)}/{HF}/{name}", built / name)
        _place(store, f"{version_dir(store, card)}/{hf_card.README}", built / hf_card.README)
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        raise
    _swap_in(built, dest, overwrite)
    return dest


def for_hub(folder: Path, base_model: str | None, datasets: Sequence[str]) -> ModelCard:
    """Rewrite the folder's card for the Hub: ``base_model`` and ``datasets`` become the given Hub ids, or are
    left out when they are local identifiers. The card is replaced (written beside and renamed), never edited
    in place: it may be a hard link into the store."""
    card = ModelCard.load(folder / hf_card.README)
    local = f"{hf_card.NAMESPACE}/"
    if base_model or (card.data.base_model and str(card.data.base_model).startswith(local)):
        card.data.base_model = base_model or None
    if datasets or any(str(d).startswith(local) for d in card.data.datasets or []):
        card.data.datasets = list(datasets) or None
    hf_card.write_card(card, folder / hf_card.README)
    return card


def push(folder: Path, repo_id: str, private: bool = False) -> str:
    """Create the model repository if needed and upload the folder; the commit's URL."""
    from huggingface_hub import HfApi  # network: only when pushing

    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=f"phi-factory: {folder.name}")
    return info.commit_url


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m phi_assets.evaluation.publish",
        description="Assemble a trained stage's Hugging Face export with its model card (push it: --push).",
    )
    parser.add_argument("stage", choices=sorted(CARD_STAGES))
    parser.add_argument("dest", type=Path, help="the folder to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    parser.add_argument("--push", metavar="REPO_ID", help="upload the folder to this Hub model repository")
    parser.add_argument(
        "--base-model", metavar="REPO_ID", help="the Hub id of the parent checkpoint (with --push)"
    )
    parser.add_argument("--dataset", metavar="REPO_ID", action="append", default=[], help="a Hub dataset id")
    parser.add_argument("--private", action="store_true", help="create the repository private (with --push)")
    args = parser.parse_args(argv)
    store = ArtifactStore(root=load_profile().artifact_root)
    try:
        folder = assemble(store, args.stage, args.dest, args.overwrite)
    except (ValueError, OSError, dg.Failure) as exc:
        print(f"error: {getattr(exc, 'description', None) or exc}", file=sys.stderr)
        return 2
    print(folder)
    if args.push:
        for_hub(folder, args.base_model, args.dataset)
        print(push(folder, args.push, args.private))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
