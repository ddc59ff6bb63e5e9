"""Materialize the whole graph on the active profile, then print a summary.

Run: ``make demo`` (or ``python -m phi_assets.demo`` with ``DAGSTER_HOME`` set). Registers the
embedded corpora (and any files already in the landing area) as shard partitions, then runs every
slice in dependency order, one run per partition: ingest, curation, synthetic data, tokenizer and
mixture, the training chain, evaluation and the model cards. It ends with a table per asset (steps,
rows or tokens, wall time), the final scores, and how to open the UI. A second run with nothing
changed recomputes nothing: every step logs that it skipped and keeps its data version.

``--cli`` runs every step through ``dagster asset materialize`` (one command per slice and
partition), as CI does; the exit status is 1 when any step failed.

MBPP (which decontamination, post-training and evaluation read) is resolved before the first step
(``phi_assets/common/mbpp_source.py``): when it can be had neither from configuration, nor from the
cache, nor from the Hugging Face Hub, the demo stops at once, exit status 2, with the one message that
says how to provide it.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg
from tqdm import tqdm

from jobs import (
    CORPUS_JOBS,
    INGEST_JOBS,
    SHINGLES_JOBS,
    TOKENIZE_JOBS,
    ablation_job,
    ablation_report_job,
    catalog_job,
    dedup_buckets_job,
    dedup_job,
    dedup_pairs_job,
    edu_classifier_job,
    eval_job,
    generator_model_job,
    mixture_job,
    mixture_proxy_job,
    model_card_job,
    safety_job,
    synthetic_batch_job,
    synthetic_corpus_job,
    tokenize_synthetic_job,
    tokenizer_job,
    topics_job,
    training_job,
    transfer_job,
)
from phi_assets.ablations.assets import ABLATIONS
from phi_assets.common.profiles import reductions
from phi_assets.curation.dedup_assets import BUCKETS
from phi_assets.demo_runs import Step, default_workers, dependencies, materialize_cli, run_plan
from phi_assets.evaluation.assets import STAGES
from phi_assets.evaluation.model_card import CARD_STAGES
from phi_assets.ingest import embedded
from phi_assets.ingest.assets import PARTITIONS
from phi_assets.ingest.catalog import source_totals
from phi_assets.mixture.search_assets import PROXIES
from phi_assets.synthetic.batches import BATCHES
from resources import load_profile
from sensors.landing import scan_landing

QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
# A command's run is one partition of one slice: its steps run in the command's process.
CLI_CONFIG = {**QUIET, "execution": {"config": {"in_process": {}}}}


def mbpp_needed(defs: dg.Definitions) -> list[str]:
    """The assets that use the ``decontamination`` resource (so MBPP), in the order they run."""
    graph = defs.resolve_asset_graph()
    return [key.to_user_string() for key in graph.toposorted_asset_keys
            if "decontamination" in graph.get(key).assets_def.required_resource_keys]


def check_mbpp(defs: dg.Definitions) -> str | None:
    """Resolve MBPP once, before any step runs: None when it is there (downloaded and cached now if it
    had to be), else the one message saying why not and how to provide it.

    Without this, a newcomer's demo would ingest, train the classifier and so on for minutes, then
    fail at the first decontaminated corpus; resolving here also means the steps, which may run in
    parallel processes, find the cached copy instead of each downloading it."""
    needed = mbpp_needed(defs)
    if not needed:
        return None
    try:
        defs.resources["decontamination"].resolved_mbpp_path()
    except ValueError as exc:
        first = needed[0]
        return (f"no step was run: {first} (the first of {len(needed)} assets of the graph that need MBPP) "
                f"cannot run: {exc}")
    return None


def register_shards(instance: dg.DagsterInstance, profile) -> dict[str, list[str]]:
    """Add embedded and landing-area shards as dynamic partitions; return all keys per source."""
    keys = {}
    for source, pdef in PARTITIONS.items():
        wanted = embedded.embedded_keys(source, profile.sizes)
        landed, _ = scan_landing(profile.landing_uri(source), {})
        wanted += [s.name for s in landed]
        existing = set(instance.get_dynamic_partitions(pdef.name))
        missing = [k for k in wanted if k not in existing]
        if missing:
            instance.add_dynamic_partitions(pdef.name, missing)
        keys[source] = sorted(set(wanted) | existing)
    return keys


@dataclass
class DemoReport:
    failures: list[str] = field(default_factory=list)
    recomputed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    sample: str = ""  # the generator model's sample answers (markdown table)
    classifier: str = ""  # the classifier's held-out report (markdown table)
    classifier_warnings: str = ""
    corpora: dict = field(default_factory=dict)  # source -> [kept, scored]
    synthetic: str = ""  # the synthetic corpus's per-set table (markdown)
    generation: dict = field(default_factory=dict)  # set -> tokens generated, tokens/s, cache hits
    mixture: str = ""  # mixture_weights' table (markdown)
    search: dict = field(default_factory=dict)  # mixture_search's proposal and fit
    training: dict = field(default_factory=dict)  # asset -> its float/int/str metadata
    transfer: dict = field(default_factory=dict)  # transferred_checkpoint's comparison with random init
    rai: dict = field(default_factory=dict)  # rai_scores: the with/without-safety tables, the judge's figures
    evaluation: dict = field(default_factory=dict)  # stage -> eval_scores' scores and counts
    eval_table: str = ""  # eval_scores' table beside phi-1's Table 1 (markdown), after the last stage
    ablations: str = ""  # ablation_report's table (markdown)
    ablation_verdicts: str = ""  # its verdict lines (markdown list)
    cards: dict = field(default_factory=dict)  # stage -> the model card's path
    assets: dict = field(default_factory=dict)  # asset -> steps, recomputed, size per unit, wall seconds

    def record(self, what: str, result, instance: dg.DagsterInstance) -> None:
        if not result.success:
            self.failures.append(f"{what}: {getattr(result, 'error', '') or _failure_message(result)}")
        if not result.run_id:
            return
        walls = {s.step_key: (s.end_time or s.start_time or 0) - (s.start_time or 0)
                 for s in instance.get_run_step_stats(result.run_id)}
        for event in result.get_asset_materialization_events():
            meta = event.materialization.metadata
            skipped = meta.get("skipped")
            asset = event.materialization.asset_key.to_user_string()
            name = asset + (f"[{event.partition}]" if event.partition else "")
            reused = bool(skipped and skipped.value)
            (self.reused if reused else self.recomputed).append(name)
            row = self.assets.setdefault(asset, {"steps": 0, "recomputed": 0, "size": {}, "wall": 0.0})
            row["steps"] += 1
            row["recomputed"] += 0 if reused else 1
            row["wall"] += walls.get(event.step_key, 0.0)
            unit, value = _size(meta)
            if unit:
                row["size"][unit] = row["size"].get(unit, 0) + value


# Per asset, what its size is counted in: the first of these its metadata has.
SIZE_KEYS = (("num_tokens", "tokens"), ("tokens_seen", "tokens"), ("dagster/row_count", "rows"),
             ("pairs", "pairs"), ("samples", "samples"), ("token_budget", "token budget"))


def _size(meta: dict) -> tuple[str | None, int]:
    for key, unit in SIZE_KEYS:
        value = meta.get(key)
        if value is not None and isinstance(value.value, (int, float)):
            return unit, int(value.value)
    return None, 0


def _execute(defs: dg.Definitions, instance: dg.DagsterInstance, via_cli: bool):
    """How one step runs: through the CLI (on the given CPUs) or in this process."""
    def execute(step: Step, cpus) -> object:
        if via_cli:
            return materialize_cli(defs, instance, step.job_name, step.partition, CLI_CONFIG, cpus)
        return defs.resolve_job_def(step.job_name).execute_in_process(
            partition_key=step.partition, instance=instance, run_config=QUIET, raise_on_error=False)
    return execute


def run_all(defs: dg.Definitions, instance: dg.DagsterInstance, keys: dict[str, list[str]],
            via_cli: bool = False, workers: int = 1) -> DemoReport:
    """Every step of ``plan``: in this process one at a time, through the CLI up to ``workers`` at once."""
    report = DemoReport()
    steps = plan(report, keys)

    def done(step: Step, result) -> None:
        report.record(step.what, result, instance)
        if step.then is not None:
            step.then(result)

    with tqdm(total=len(steps), desc="steps", unit="run") as bar:
        run_plan(steps, dependencies(defs, steps), _execute(defs, instance, via_cli), done,
                 workers=workers if via_cli else 1, progress=lambda: bar.update(1))
    return report


def _if_success(report_field: Callable[[object], None]) -> Callable[[object], None]:
    return lambda result: report_field(result) if result.success else None


def plan(report: DemoReport, keys: dict[str, list[str]]) -> list[Step]:
    """The whole graph as steps, in dependency order; each step's ``then`` fills the report."""
    steps = [Step(job.name, f"raw_{source}_shards[{key}]", key)
             for source, job in INGEST_JOBS.items() for key in keys[source]]
    steps.append(Step(catalog_job.name, "raw_catalog"))
    steps.append(Step(generator_model_job.name, "generator_model", then=_if_success(
        lambda r: setattr(report, "sample", _metadata_text(r, "generator_model", "sample")))))
    steps += [Step(dedup_buckets_job.name, f"dedup buckets {key}", key) for key in BUCKETS.get_partition_keys()]
    steps += [Step(job.name, f"dedup_{source}_shingles[{key}]", key)
              for source, job in SHINGLES_JOBS.items() for key in keys[source]]
    steps += [Step(dedup_pairs_job.name, f"dedup pairs {key}", key) for key in BUCKETS.get_partition_keys()]
    steps.append(Step(dedup_job.name, dedup_job.name))

    def classifier(result) -> None:
        report.classifier = _metadata_text(result, "edu_classifier", "report")
        report.classifier_warnings = _metadata_text(result, "edu_classifier", "warnings")
    steps.append(Step(edu_classifier_job.name, edu_classifier_job.name, then=_if_success(classifier)))
    steps += [Step(job.name, f"filtered_{source}_corpus[{key}]", key,
                   then=lambda r, source=source: _count_corpus(report, source, r))
              for source, job in CORPUS_JOBS.items() for key in keys[source]]
    steps.append(Step(topics_job.name, "topics"))
    steps += [Step(synthetic_batch_job.name, f"synthetic batch {key}", key,
                   then=lambda r: _count_generation(report, r)) for key in BATCHES.get_partition_keys()]
    steps.append(Step(synthetic_corpus_job.name, "synthetic_corpus", then=_if_success(
        lambda r: setattr(report, "synthetic", _metadata_text(r, "synthetic_corpus", "sets")))))
    steps += mixture_steps(report, keys)
    steps.append(Step(training_job.name, training_job.name, then=lambda r: _read_training(report, r)))
    steps.append(Step(transfer_job.name, "transferred_checkpoint", then=_if_success(
        lambda r: setattr(report, "transfer", _metadata_value(r, "transferred_checkpoint", "transfer") or {}))))
    steps.append(Step(safety_job.name, "rai_scores", then=_if_success(lambda r: setattr(report, "rai", {
        k: _metadata_value(r, "rai_scores", k) for k in RAI_SHOWN}))))
    # The reference model's evaluation reads generator_model only: it runs beside the training chain (after the
    # mixture, so that it takes no CPU from curation) instead of waiting for every checkpoint.
    reference_after = ("generator_model", "mixture_weights")
    steps += [Step(eval_job.name, f"eval_scores[{stage}]", stage,
                   then=lambda r, s=stage: _read_eval(report, s, r),
                   after=reference_after if stage == "reference" else ()) for stage in STAGES]
    steps += [Step(ablation_job.name, f"data_ablations[{key}]", str(key))
              for key in ABLATIONS.get_partition_keys()]

    def ablations(result) -> None:
        report.ablations = _metadata_text(result, "ablation_report", "table")
        report.ablation_verdicts = _metadata_text(result, "ablation_report", "verdicts")
    steps.append(Step(ablation_report_job.name, "ablation_report", then=_if_success(ablations)))
    # A card reads the ablation report (its evidence) beside its stage's evaluation, which the graph does not
    # say (the card does not depend on the ablations): it waits for both.
    steps += [Step(model_card_job.name, f"model_card[{stage}]", stage, then=_if_success(
        lambda r, s=stage: report.cards.__setitem__(s, _metadata_text(r, "model_card", "path"))),
        after=("eval_scores", "ablation_report")) for stage in CARD_STAGES]
    return steps


RAI_SHOWN = ("table", "keyword_table", "judge", "judge_unparsed", "judge_accuracy", "keyword_accuracy",
             "judge_reliable", "requests")
TRAINING_STAGES = ("pretrained_checkpoint", "midtrained_checkpoint", "sft_checkpoint", "dpo_checkpoint")


def _read_training(report: DemoReport, result) -> None:
    """The tiny training chain's metadata: pretrain -> midtrain -> SFT -> preference pairs -> DPO."""
    for event in result.get_asset_materialization_events():
        meta = event.materialization.metadata
        name = event.materialization.asset_key.to_user_string()
        report.training[name] = {k: v.value for k, v in meta.items() if not isinstance(v.value, (dict, list))
                                 and k not in ("loss_curve", "examples")}


def _read_eval(report: DemoReport, stage: str, result) -> None:
    """eval_scores for one stage: a trained checkpoint or the default engine model."""
    for event in result.get_asset_materialization_events():
        meta = {k: v.value for k, v in event.materialization.metadata.items()}
        kept = ("problems", "verdicts", "engine_errors", "reduced")
        report.evaluation[stage] = {k: meta[k] for k in kept}
        report.evaluation[stage].update({k: v for k, v in meta.items() if isinstance(v, float)})
        if meta.get("understanding_detail", {}).get("judge_reliable") is False:
            report.evaluation[stage]["judge"] = "the understanding judge cannot tell right from empty"
        report.eval_table = meta["phi1_table1"]


def mixture_steps(report: DemoReport, keys: dict[str, list[str]]) -> list[Step]:
    """Tokenizer, every tokenized shard, the search's proxies, the search, the weights."""
    steps = [Step(tokenizer_job.name, "tokenizer")]
    steps += [Step(job.name, f"tokenized_filtered_{source}[{key}]", key)
              for source, job in TOKENIZE_JOBS.items() for key in keys[source]]
    steps += [Step(tokenize_synthetic_job.name, f"tokenize synthetic {key}", key)
              for key in BATCHES.get_partition_keys()]
    steps += [Step(mixture_proxy_job.name, f"mixture_proxies[{key}]", key)
              for key in PROXIES.get_partition_keys()]

    def mixture(result) -> None:
        report.mixture = _metadata_text(result, "mixture_weights", "mixture")
        for event in result.get_asset_materialization_events():
            if event.materialization.asset_key.to_user_string() == "mixture_search":
                meta = event.materialization.metadata
                report.search = {k: meta[k].value for k in ("proposal", "loo_spearman", "predicted_loss",
                                                             "phi4_predicted_loss", "num_proxies")}
    steps.append(Step(mixture_job.name, mixture_job.name, then=_if_success(mixture)))
    return steps


def _count_generation(report: DemoReport, result: dg.ExecuteInProcessResult) -> None:
    for event in result.get_asset_materialization_events():
        meta = event.materialization.metadata
        if "llm_requests" not in meta:
            continue
        totals = report.generation.setdefault(event.materialization.asset_key.to_user_string(), {})
        for key in ("llm_requests", "llm_cache_hits", "llm_generated_tokens"):
            totals[key] = totals.get(key, 0) + meta[key].value
        totals["llm_tokens_per_s"] = max(totals.get("llm_tokens_per_s", 0.0), meta["llm_tokens_per_s"].value)


def _count_corpus(report: DemoReport, source: str, result: dg.ExecuteInProcessResult) -> None:
    for event in result.get_asset_materialization_events():
        funnel = event.materialization.metadata.get("funnel")
        if funnel is not None:
            totals = report.corpora.setdefault(source, {})
            for key, value in funnel.value.items():
                totals[key] = totals.get(key, 0) + value


def _plain(table: str) -> str:
    """The sample's markdown table as Q/A text for the terminal."""
    out = []
    for line in table.splitlines()[2:]:
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 4:
            answer = "\n   ".join(cells[1].split("<br>"))
            out.append(f"Q: {cells[0]}\nA: {answer}\n   [{cells[2]} tokens, {cells[3]}]")
    return "\n".join(out)


def _plain_table(table: str) -> str:
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if "---" not in line]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def _metadata_text(result: dg.ExecuteInProcessResult, asset: str, key: str) -> str:
    value = _metadata_value(result, asset, key)
    return "" if value is None else str(value)


def _metadata_value(result: dg.ExecuteInProcessResult, asset: str, key: str):
    for event in result.get_asset_materialization_events():
        if event.materialization.asset_key.to_user_string() == asset:
            value = event.materialization.metadata.get(key)
            return value.value if value is not None else None
    return None


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data.error:
            error = event.step_failure_data.error
            while error.cause is not None:  # the user code's own error, not Dagster's wrapper
                error = error.cause
            return f"{event.step_key}: {error.message.strip().splitlines()[0]}"
    return "failed (see the run in the UI)"


def _print_training(training: dict[str, dict]) -> None:
    if not training:
        return
    print("\ntraining chain (loss curves are in each checkpoint's metadata in the UI):")
    print(f"{'stage':24} {'steps':>6} {'tokens':>9} {'first loss':>10} {'final loss':>10} {'val loss':>18} "
          f"{'tokens/s':>9} {'wall s':>7}")
    for name in TRAINING_STAGES:
        m = training.get(name)
        if not m:
            continue
        val = " ".join(f"{k.removeprefix('val_loss_')}:{v:.3f}" for k, v in m.items()
                       if k.startswith("val_loss_"))
        print(f"{name:24} {m['steps']:>6} {m['tokens_seen']:>9,} {m['first_loss']:>10.3f} "
              f"{m['final_loss']:>10.3f} {val:>18} {m['tokens_per_s']:>9,.0f} {m['wall_time_s']:>7.1f}")
    pairs = training.get("preference_pairs")
    if pairs:
        accuracy = training.get("dpo_checkpoint", {}).get("preference_accuracy", float("nan"))
        print(f"preference_pairs: {pairs['rejection_pairs']} rejection-sampling + {pairs['pivotal_pairs']} "
              f"pivotal-token pairs from {pairs['problems']} problems (policy pass rate "
              f"{pairs['policy_pass_rate']:.2f}); DPO preference accuracy on them {accuracy:.2f}")
    _print_judged(training)


def _print_judged(training: dict[str, dict]) -> None:
    """judged_pairs: what the LLM judge kept, and how far it agrees with itself when the answers swap places."""
    judged, dpo = training.get("judged_pairs"), training.get("dpo_checkpoint", {})
    if not judged:
        return

    def rate(key: str) -> str:
        return "n/a" if judged[key] < 0 else f"{judged[key]:.2f}"

    print(f"judged_pairs: {judged['judged_pairs']} of {judged['compared']} answer pairs kept by the judge "
          f"({judged['judge']}): position-swap agreement {rate('agreement_rate')}, "
          f"tie rate {rate('tie_rate')}, first-position preference {rate('first_position_rate')}")
    if "judged_pairs_used" in dpo:
        print(f"dpo_checkpoint trained on {dpo['verified_pairs_used']} verified + {dpo['judged_pairs_used']} "
              f"judged pairs (judged share {dpo['judged_share']:.2f}) + {dpo.get('safety_pairs_used', 0)} "
              f"safety pairs (safety share {dpo.get('safety_share', 0.0):.2f})")


def _print_rai(rai: dict) -> None:
    """rai_scores: refusal and over-refusal with and without the safety data (phi-3's Figure 8)."""
    if not rai.get("table"):
        return

    def accuracy(key: str) -> str:
        return "n/a" if rai[key] < 0 else f"{rai[key]:.2f}"

    print(f"\nrai_scores ({rai['requests']} held-out safety requests per model; refusal labelled by the judge "
          f"{rai['judge']}, {rai['judge_unparsed']} unparsed replies labelled by keywords; on the set's own "
          f"reference answers the judge is right {accuracy('judge_accuracy')}, the keywords "
          f"{accuracy('keyword_accuracy')}{'' if rai['judge_reliable'] else ': the judge is not reliable'}; "
          "docs/post-training.md):")
    print(_plain_table(rai["table"]))
    print("the keyword baseline's labels:")
    print(_plain_table(rai["keyword_table"]))


def _print_transfer(transfer: dict) -> None:
    """transferred_checkpoint: the expanded model against random init, racing to the same target loss."""
    if not transfer:
        return

    def steps(n) -> str:
        return f"{n} steps" if n else f"not within {transfer['steps']} steps"

    def val(losses: dict) -> str:
        return " ".join(f"{k}:{v:.3f}" for k, v in losses.items()) or "-"

    below = 100 * (1 - transfer["target_loss"] / transfer["small_final_loss"])
    print("\ntransferred_checkpoint (the pretrained model widened and deepened, function-preserving; curves in "
          "the UI):")
    print(f"  small model: final loss {transfer['small_final_loss']:.3f}, val loss "
          f"{val(transfer['small_val_loss'])}; expanded, before training: val loss "
          f"{val(transfer['expanded_initial_val_loss'])}")
    print(f"  to {transfer['target_loss']:.3f} ({below:.0f}% below the small model's final loss): expanded "
          f"{steps(transfer['steps_to_target'])}, random init "
          f"{steps(transfer['baseline_steps_to_target']) if transfer['baseline_final_loss'] else 'not run'}")


def _print_evaluation(report: DemoReport) -> None:
    if not report.evaluation:
        return
    print("\neval_scores (greedy pass@1, every sample run in the sandbox; per-sample results in DuckDB):")
    for stage, m in report.evaluation.items():
        scores = ", ".join(f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, float))
        counts = ", ".join(f"{b} {n}" for b, n in m["problems"].items())
        errors = f"; engine errors {m['engine_errors']}" if m["engine_errors"] else ""
        errors += f"; {m['judge']}" if "judge" in m else ""
        errors += f"; reduced: {m['reduced']}" if m["reduced"] != "none" else ""
        print(f"  {stage:10} {scores}  (problems: {counts}{errors})")
    print("beside phi-1's Table 1:")
    print(_plain_table(report.eval_table.replace("**", "")))


def _print_assets(report: DemoReport, order: list[str]) -> None:
    """The per-asset summary: steps (partitions), how many recomputed, rows or tokens, wall seconds."""
    print(f"\n{'asset':32} {'steps':>5} {'recomputed':>10} {'rows / tokens':>26} {'wall s':>8}")
    for asset in sorted(report.assets, key=lambda a: order.index(a) if a in order else len(order)):
        row = report.assets[asset]
        size = ", ".join(f"{n:,} {unit}" for unit, n in row["size"].items()) or "-"
        print(f"{asset:32} {row['steps']:>5} {row['recomputed']:>10} {size:>26} {row['wall']:>8.1f}")
    total = sum(r["wall"] for r in report.assets.values())
    print(f"{'all steps':32} {sum(r['steps'] for r in report.assets.values()):>5} "
          f"{sum(r['recomputed'] for r in report.assets.values()):>10} {'':>26} {total:>8.1f}")


def _print_reductions(profile) -> None:
    """What this scale preset runs smaller than the phi-1 paper's (the ``phi1`` preset; docs/scale.md)."""
    reduced = reductions(profile.sizes)
    if not reduced:
        return
    print(f"\nReduced at scale '{profile.scale}' (this run, then the phi1 preset's value; docs/scale.md):")
    cells = [f"{name} {_value(here)} ({_value(there)})" for name, here, there in reduced]
    line = " "
    for cell in cells:
        if len(line) + len(cell) > 110:
            print(line.rstrip(","))
            line = " "
        line += f" {cell},"
    print(line.rstrip(","))


def _value(value) -> str:
    return f"{value:,}" if type(value) is int else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m phi_assets.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cli", action="store_true",
                        help="every step through `dagster asset materialize` (one per slice and partition)")
    args = parser.parse_args(argv)
    try:
        workers = default_workers()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    profile = load_profile()
    os.environ.setdefault("DAGSTER_HOME", profile.dagster_home)
    os.makedirs(os.environ["DAGSTER_HOME"], exist_ok=True)
    from phi_assets.definitions import defs

    problem = check_mbpp(defs)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    start = time.time()
    with dg.DagsterInstance.get() as instance:
        keys = register_shards(instance, profile)
        report = run_all(defs, instance, keys, via_cli=args.cli, workers=workers)
    elapsed = time.time() - start
    print(f"\nphi-factory demo on profile '{profile.name}', scale '{profile.scale}' ({elapsed:.0f} s)")
    print(f"{'source':8} {'shards':>6} {'read':>8} {'docs':>8} {'rejected':>8} {'MB':>8} {'est. tokens':>12}")
    for source, shards, read, docs, rejected, num_bytes, tokens in source_totals(profile.catalog_path):
        print(f"{source:8} {shards:>6} {read:>8} {docs:>8} {rejected:>8} {num_bytes / 1e6:>8.1f} {tokens:>12,}")
    if report.sample:
        print("\ngenerator_model sample (greedy; the table is in the asset's metadata in the UI):")
        print(_plain(report.sample))
    if report.classifier:
        print("\nedu_classifier, held-out split (confusion matrices are in the asset's metadata):")
        print(_plain_table(report.classifier))
        if report.classifier_warnings not in ("", "none"):
            print(report.classifier_warnings)
    for source, f in sorted(report.corpora.items()):
        print(f"filtered_{source}_corpus: {f['in']} quality-filtered = {f['dedup_removed']} duplicates + "
              f"{f['contaminated']} contaminated + {f['below_threshold']} below threshold + {f['kept']} kept")
    if report.synthetic:
        print("\nsynthetic_corpus (diversity and coverage are in the asset's metadata):")
        print(_plain_table(report.synthetic))
    for asset, g in sorted(report.generation.items()):
        print(f"{asset}: {g['llm_requests']} requests, {g['llm_cache_hits']} from the request cache, "
              f"{g['llm_generated_tokens']:,} tokens generated (up to {g['llm_tokens_per_s']:.0f} tokens/s)")
    if report.mixture:
        print("\nmixture_weights (phi-4's table mapped onto the sources, epochs capped; plots in the UI):")
        print(_plain_table(report.mixture))
    if report.search:
        m = report.search
        proposal = ", ".join(f"{s} {w:.3f}" for s, w in m["proposal"].items())
        print(f"mixture_search over {m['num_proxies']} proxies (leave-one-out Spearman "
              f"{m['loo_spearman']:.2f}): {proposal}; predicted loss {m['predicted_loss']:.3f} "
              f"vs phi-4 table {m['phi4_predicted_loss']:.3f}")
    _print_training(report.training)
    _print_transfer(report.transfer)
    _print_rai(report.rai)
    _print_assets(report, [k.to_user_string() for k in defs.resolve_asset_graph().toposorted_asset_keys])
    _print_evaluation(report)
    if report.ablations:
        print("\nablation_report (loss on the benchmarks' reference solutions, mean [95% interval] over seeds; "
              "paired differences against raw; the plot is in the asset's metadata; docs/ablations.md):")
        print(_plain_table(report.ablations))
        print(report.ablation_verdicts.replace("- ", "  ", 1).replace("\n- ", "\n  "))
    print(f"\nCatalog: {profile.catalog_path}   Artifacts: {profile.artifact_root}")
    for stage, path in report.cards.items():
        print(f"model_card[{stage}]: {path}")
    print(f"Steps: {len(report.recomputed)} recomputed, {len(report.reused)} unchanged "
          "(code and inputs as before: no work done, same data versions)")
    print(f"Wall time: {elapsed:.0f} s{' (every step through dagster asset materialize)' if args.cli else ''}")
    _print_reductions(profile)
    print("Open the UI: make ui   then http://127.0.0.1:3000 (Assets > View global asset lineage; "
          "plots are in each asset's metadata)")
    for failure in report.failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
