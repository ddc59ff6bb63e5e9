"""``model_card``'s markdown: a function of the facts read from the store (``card_facts``), nothing else.

Sections: the model (versions, architecture, chain), the recipe of every stage of the chain and its
losses, the data (tokenizer, mixture), decontamination, evaluation beside phi-1's Table 1, lineage
(``sections``, which the Hugging Face card, ``hf_card``, shows too).
"""

from typing import Any

from phi_assets.common.decontaminate import DecontamConfig
from phi_assets.common.tables import md_table
from phi_assets.common.versioning import stable_hash
from phi_assets.evaluation.assets import EVAL_ASSET
from phi_assets.evaluation.card_facts import Entry, Facts
from phi_assets.evaluation.table1 import phi1_table1

CARD, LINEAGE = "MODEL_CARD.md", "lineage.json"
NOT_RECORDED = "not recorded"


def _md(head: list[str], rows: list[list[Any]]) -> str:
    return md_table(head, rows).value


def _num(n: float | int | None) -> str:
    if n is None:
        return "-"
    if isinstance(n, int) or float(n).is_integer():
        return f"{int(n):,}"
    return f"{n:.4g}"


def _mean_tenth(values: list[float], last: bool) -> float | None:
    if not values:
        return None
    tenth = max(1, len(values) // 10)
    part = values[-tenth:] if last else values[:tenth]
    return sum(part) / len(part)


def recipe_name(manifest: dict) -> str:
    """The training recipe a checkpoint was trained with, as its lineage records it (``debug``,
    ``phi1_pretrain``, ``midtrain(<pretraining recipe>)``); a checkpoint stored before lineages recorded
    recipes says so rather than guessing."""
    recipe = manifest.get("metadata", {}).get("lineage", {}).get("recipe")
    return recipe["name"] if isinstance(recipe, dict) and recipe.get("name") else NOT_RECORDED


def _architecture(facts: Facts) -> str:
    c, train = facts.config, facts.checkpoint["inputs"]["train"]
    heads = c["num_attention_heads"]
    head_dim = c["hidden_size"] // heads
    rows = [
        [
            "config",
            f"`{train['model']}` ({', '.join(c.get('architectures', []))}, model_type {c.get('model_type')})",
        ],
        ["parameters", _num(facts.checkpoint["metadata"].get("num_params"))],
        ["layers", c["num_hidden_layers"]],
        ["hidden size", c["hidden_size"]],
        ["MLP size", c.get("intermediate_size", "-")],
        ["attention heads", f"{heads} (head dim {head_dim}, {c.get('num_key_value_heads', heads)} key/value)"],
        [
            "rotary dims",
            f"{round(c.get('partial_rotary_factor', 1.0) * head_dim)} of {head_dim}, base "
            f"{_num(c.get('rope_theta'))}",
        ],
        ["vocabulary", _num(c["vocab_size"])],
        ["positions", _num(c["max_position_embeddings"])],
        [
            "dropout (residual, attention, embedding)",
            f"{c.get('resid_pdrop')}, {c.get('attention_dropout')}, {c.get('embd_pdrop')}",
        ],
    ]
    return _md(["architecture", ""], rows)


def _stage_data(manifest: dict) -> str:
    inputs, lineage = manifest["inputs"], manifest["metadata"].get("lineage", {})
    if manifest["asset"] == "pretrained_checkpoint":
        return f"mixture `{inputs['mixture'][:12]}`"
    if manifest["asset"] == "midtrained_checkpoint":
        weights = ", ".join(f"{k} {v:.3f}" for k, v in inputs.get("weights", {}).items())
        return f"mixture `{inputs['mixture'][:12]}` reweighted toward long documents: {weights}"
    if manifest["asset"] == "sft_checkpoint":
        examples = ", ".join(f"{k} {v}" for k, v in sorted(lineage.get("examples", {}).items()))
        return f"examples: {examples} (synthetic_corpus `{lineage.get('synthetic_corpus', '?')[:12]}`)"
    if manifest["asset"] == "dpo_checkpoint":
        pairs = ", ".join(f"{k} {v}" for k, v in sorted(lineage.get("pairs", {}).items()))
        return f"preference pairs: {pairs} (`{inputs['pairs'][:12]}`), beta {inputs.get('beta')}"
    return "-"


def _recipe(facts: Facts) -> str:
    rows, losses = [], []
    for m in facts.chain:
        t, meta = m["inputs"]["train"], m["metadata"]
        summary = meta.get("summary", {})
        rows.append(
            [
                m["asset"],
                f"`{m['data_version'][:12]}`",
                recipe_name(m),
                _num(meta.get("steps")),
                _num(meta.get("tokens")),
                t["seq_len"],
                _batch(t),
                f"{t['lr']:g} (min x{t['min_lr_ratio']:g})",
                f"{t['schedule']}, warmup {t['warmup_steps']}",
                f"{t['weight_decay']:g}",
                t["precision"],
                ", ".join(
                    f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["overrides"].items()
                )
                or "-",
            ]
        )
        val = ", ".join(f"{v:.3f} @{k}" for k, v in summary.get("val_loss", {}).items()) or "-"
        parent_val = ", ".join(f"{v:.3f} @{k}" for k, v in summary.get("parent_val_loss", {}).items()) or "-"
        first, final = _mean_tenth(meta.get("loss", []), False), _mean_tenth(meta.get("loss", []), True)
        extra = (
            f"preference accuracy {summary['preference_accuracy']:.3f}"
            if "preference_accuracy" in summary
            else ""
        )
        losses.append(
            [
                m["asset"],
                "-" if first is None else f"{first:.3f}",
                "-" if final is None else f"{final:.3f}",
                val,
                parent_val,
                extra or "-",
                _stage_data(m),
            ]
        )
    head = [
        "stage",
        "version",
        "recipe",
        "steps",
        "tokens",
        "seq len",
        "global batch (micro)",
        "peak lr",
        "schedule",
        "weight decay",
        "precision",
        "model overrides",
    ]
    loss_head = [
        "stage",
        "first loss",
        "final loss",
        "validation loss @seq len",
        "parent's validation loss",
        "other",
        "data",
    ]
    return "\n\n".join(
        [
            _md(head, rows),
            "Losses: the mean of the first and of the last tenth of the steps; validation on held-out tokens.",
            _md(loss_head, losses),
        ]
    )


def _data(facts: Facts) -> str:
    out = []
    if facts.tokenizer is not None:
        t = facts.tokenizer["metadata"]
        out.append(
            f"**Tokenizer** `{facts.tokenizer['data_version']}`: {t.get('origin', '?')}, vocabulary "
            f"{_num(t.get('vocab_size'))}, trained on {_num(t.get('training_docs'))} documents "
            f"({_num(t.get('training_bytes'))} bytes); bytes per token "
            + ", ".join(f"{k} {v}" for k, v in t.get("bytes_per_token", {}).items())
            + "."
        )
    if facts.mixture is not None:
        m = facts.mixture["metadata"]
        shards = {s: len(v) for s, v in m.get("shards", {}).items()}
        out.append(
            f"**Mixture** `{facts.mixture['data_version']}` (mixture_weights, origin {m.get('origin')}): "
            f"token budget {_num(m.get('token_budget'))}, at most {_num(m.get('max_epochs'))} epochs of any "
            "source."
        )
        rows = [
            [
                r["source"],
                r.get("category", "-"),
                shards.get(r["source"], "-"),
                _num(r["unique_tokens"]),
                f"{r['requested_weight']:.4f}",
                f"{r['weight']:.4f}",
                _num(r["tokens_seen"]),
                f"{r['epochs']:.2f}",
            ]
            for r in m.get("table", [])
        ]
        head = [
            "source",
            "category",
            "shards",
            "unique tokens",
            "requested weight",
            "weight",
            "tokens seen",
            "epochs",
        ]
        out.append(_md(head, rows))
    return "\n\n".join(out) or "No pretraining data recorded."


def _decontamination_section(facts: Facts, settings: dict) -> str:
    cfg = DecontamConfig(**settings)
    method = (
        f"Every corpus that reaches training is scanned for HumanEval (164) and MBPP (974) tasks "
        f"(docs/decontamination.md). Pass 1, every document: {cfg.ngram}-gram overlap "
        f"({cfg.min_component_tokens}-grams for components of {cfg.min_component_tokens}-{cfg.ngram - 1} "
        f"tokens) confirmed by a difflib ratio >= {cfg.min_ngram_ratio}. "
    )
    if cfg.use_embeddings:
        method += (
            f"Pass 2, code: functions of >= {cfg.min_syntax_tokens} abstracted tokens with a syntax ratio >= "
            f"{cfg.min_syntax_ratio} under a consistent renaming and an embedding cosine >= "
            f"{cfg.min_embedding_similarity} (all-MiniLM-L6-v2). "
        )
    else:
        method += "Pass 2 (embeddings and syntax) is off in this deployment's settings. "
    method += (
        "Flagged documents are removed and listed; the written corpus is scanned again and the blocking "
        "`decontaminated` check passes only when nothing matches."
    )
    per_asset: dict[str, dict] = {}
    for e in facts.entries:
        if e.decontamination is None:
            continue
        d = per_asset.setdefault(
            e.asset, {"partitions": 0, "kept": 0, "removed": [], "recheck": 0, "scanners": set()}
        )
        d["partitions"] += 1
        d["kept"] += e.decontamination["kept"] or 0
        d["removed"] += e.decontamination["removed"]
        d["recheck"] += e.decontamination["recheck_flagged"]
        if e.decontamination["decontaminator"]:
            d["scanners"].add(e.decontamination["decontaminator"])
    rows = []
    for name, d in per_asset.items():
        tasks: dict[str, int] = {}
        for t in d["removed"]:
            tasks[t] = tasks.get(t, 0) + 1
        listed = ", ".join(f"{t} x{n}" if n > 1 else t for t, n in sorted(tasks.items())) or "-"
        rows.append(
            [
                name,
                d["partitions"],
                _num(d["kept"]),
                len(d["removed"]),
                listed,
                d["recheck"],
                ", ".join(f"`{s}`" for s in sorted(d["scanners"])) or "-",
            ]
        )
    removed = sum(len(d["removed"]) for d in per_asset.values())
    recheck = sum(d["recheck"] for d in per_asset.values())
    noun = "document" if removed == 1 else "documents"
    total = f"{removed} {noun} removed in total; the re-scan of the written corpora found {recheck}" + (
        " (the check passed)." if recheck == 0 else " (**the decontaminated check failed**)."
    )
    head = [
        "corpus",
        "partitions",
        "documents kept",
        "removed",
        "matched tasks",
        "re-scan matches",
        "decontaminator",
    ]
    return "\n\n".join([method, _md(head, rows) if rows else "No decontaminated corpus upstream.", total])


def _of(problems: int, total: int | None) -> str:
    """``164``, or ``50 of 164 (reduced)`` where the scale preset evaluated the first N only."""
    return f"{problems} of {total} (reduced)" if total and problems < total else str(problems)


def evaluation_section(facts: Facts) -> str:
    meta = facts.eval["metadata"]
    ks = sorted(
        {k for s in meta["scores"].values() for k in s if k.startswith("pass@")}, key=lambda k: int(k[5:])
    )
    rows = []
    for benchmark, s in sorted(meta["scores"].items()):
        verdicts = ", ".join(f"{k} {v}" for k, v in sorted(meta.get("verdicts", {}).get(benchmark, {}).items()))
        rows.append(
            [
                benchmark,
                _of(s["problems"], meta.get("benchmark_sizes", {}).get(benchmark)),
                s["samples"],
                s["passed"],
                *[f"{100 * s[k]:.1f}%" if k in s else "-" for k in ks],
                verdicts or "-",
            ]
        )
    out = [
        f"`{EVAL_ASSET}[{facts.stage}]` `{facts.eval['data_version']}` (eval set `{meta['eval_set']}`, "
        f"{'chat' if meta.get('chat') else 'base-model'} prompts, every sample executed in the sandbox):",
        _md(["benchmark", "problems", "samples", "passed", *ks, "verdicts"], rows),
    ]
    if meta.get("engine_errors"):
        out.append(
            "Engine errors (counted as wrong): "
            + ", ".join(f"{k} {v}" for k, v in sorted(meta["engine_errors"].items()))
            + "."
        )
    if meta.get("understanding"):
        u = meta["understanding"]
        out.append(
            f"Understanding (LLM-graded, phi-1's Table 2): {u.get('score')} by {u.get('judge')}, judge gap "
            f"{u.get('judge_gap')} ({'reliable' if u.get('judge_reliable') else 'not a measurement'})."
        )
    out.append("Beside the phi-1 paper's Table 1 (pass@1):")
    out.append(phi1_table1({facts.stage: meta}).value)
    return "\n\n".join(out)


def lineage_section(facts: Facts, max_rows: int) -> str:
    by_asset: dict[str, list[Entry]] = {}
    for e in facts.entries:
        by_asset.setdefault(e.asset, []).append(e)
    rows = []
    for name, entries in by_asset.items():
        if len(entries) > max_rows:
            statuses: dict[str, int] = {}
            for e in entries:
                statuses[e.status.split(":")[0]] = statuses.get(e.status.split(":")[0], 0) + 1
            digest = stable_hash([[e.partition, e.version] for e in entries], 12)
            summary = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
            rows.append(
                [
                    name,
                    f"{len(entries)} partitions ({LINEAGE})",
                    f"all: `{digest}`",
                    entries[0].code_version or "-",
                    summary,
                ]
            )
            continue
        for e in entries:
            rows.append(
                [
                    e.asset,
                    "-" if e.partition is None else e.partition,
                    f"`{e.version}`" if e.version else "-",
                    e.code_version or "-",
                    e.status,
                ]
            )
    counts = [(n, len(by_asset[n])) for n in facts.sources if n in by_asset]
    shards = f"{sum(c for _, c in counts)} shards ({', '.join(f'{c} {n}' for n, c in counts)})"
    head = ["asset", "partition", "data version", "code version", "recorded downstream"]
    return "\n\n".join(
        [
            f"{len(facts.entries)} asset partitions of {len(by_asset)} assets, from {shards} to the evaluation."
            f" *recorded downstream*: `ok` when an asset below it names this version among its "
            "inputs, `-` when none records versions of it, `stale` when one used another version.",
            _md(head, rows),
        ]
    )


def render(facts: Facts, decontamination: dict, max_rows: int = 64) -> str:
    """The card as markdown: a function of the facts only (no clock), so equal inputs give equal cards."""
    parts = [f"# Model card: phi-factory {facts.stage}"]
    for heading, text in sections(facts, decontamination, max_rows):
        parts += [heading, text] if heading else [text]
    return "\n\n".join(parts) + "\n"


def sections(facts: Facts, decontamination: dict, max_rows: int = 64) -> list[tuple[str, str]]:
    """The card's sections as (``## heading``, markdown), the summary and warnings first (no heading):
    ``MODEL_CARD.md`` and the Hugging Face card (``hf_card``) both show them."""
    cp = facts.checkpoint
    parents = " <- ".join(f"{m['asset']} `{m['data_version'][:12]}`" for m in reversed(facts.chain))
    stale = [e for e in facts.entries if e.status.startswith("stale")]
    missing = [e for e in facts.entries if e.version is None]
    warnings = [f"> **Warning**: {e.where} is {e.status}." for e in stale + missing]
    he = facts.eval["metadata"]["scores"]
    headline = ", ".join(
        f"{b} pass@1 {100 * s['pass@1']:.1f}% ({s['problems']} problems)" for b, s in sorted(he.items())
    )
    summary = (
        f"`{facts.asset}` data version `{cp['data_version']}` (code version {cp['code_version']}): "
        f"{_num(cp['metadata'].get('num_params'))} parameters, {_num(cp['metadata'].get('tokens'))} tokens in "
        f"this stage; {headline}."
    )
    return [
        ("", "\n\n".join([summary, *warnings])),
        ("## Model", f"Chain: {parents}.\n\n{_architecture(facts)}"),
        ("## Recipe", _recipe(facts)),
        ("## Data", _data(facts)),
        ("## Decontamination", _decontamination_section(facts, decontamination)),
        ("## Evaluation", evaluation_section(facts)),
        ("## Lineage", lineage_section(facts, max_rows)),
    ]


def _batch(train: dict) -> str:
    """The global batch (sequences per optimizer step) and the per-rank micro-batch; a config recorded
    before global batches were stated shows its per-rank micro-batch x accumulation."""
    if "global_batch_size" in train:
        return f"{train['global_batch_size']} (micro {train['micro_batch_size']})"
    return f"{train['micro_batch_size']} x {train['grad_accum']} per rank"
