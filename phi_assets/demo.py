"""Materialize everything that exists so far on the active profile, then print a summary.

Run: ``make demo`` (or ``python -m phi_assets.demo`` with ``DAGSTER_HOME`` set). Registers the
embedded corpora (and any files already in the landing area) as shard partitions, ingests every
shard in its own run, rebuilds the catalog, and prints per-source counts. A second run with
nothing changed recomputes nothing: every step logs that it skipped and keeps its data version.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass, field

import dagster as dg
from tqdm import tqdm

from jobs import (
    CORPUS_JOBS,
    INGEST_JOBS,
    TOKENIZE_JOBS,
    catalog_job,
    dedup_job,
    edu_classifier_job,
    eval_job,
    generator_model_job,
    mixture_job,
    mixture_proxy_job,
    synthetic_batch_job,
    synthetic_corpus_job,
    tokenize_synthetic_job,
    tokenizer_job,
    topics_job,
    training_job,
)
from phi_assets.evaluation.assets import STAGES
from phi_assets.ingest import embedded
from phi_assets.ingest.assets import PARTITIONS
from phi_assets.ingest.catalog import source_totals
from phi_assets.mixture.search_assets import PROXIES
from phi_assets.synthetic.generated import BATCHES
from resources import load_profile
from sensors.landing import scan_landing

QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


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
    evaluation: dict = field(default_factory=dict)  # stage -> eval_scores' scores and counts
    eval_table: str = ""  # eval_scores' table beside phi-1's Table 1 (markdown), after the last stage

    def record(self, what: str, result: dg.ExecuteInProcessResult) -> None:
        if not result.success:
            self.failures.append(f"{what}: {_failure_message(result)}")
        for event in result.get_asset_materialization_events():
            skipped = event.materialization.metadata.get("skipped")
            name = event.materialization.asset_key.to_user_string()
            name += f"[{event.partition}]" if event.partition else ""
            (self.reused if skipped and skipped.value else self.recomputed).append(name)


def _run(defs: dg.Definitions, instance: dg.DagsterInstance, report: DemoReport,
         job_name: str, what: str, partition: str | None = None) -> dg.ExecuteInProcessResult:
    """One job (one partition of it) in this process; its outcome goes into the report."""
    result = defs.resolve_job_def(job_name).execute_in_process(
        partition_key=partition, instance=instance, run_config=QUIET, raise_on_error=False)
    report.record(what, result)
    return result


def run_all(defs: dg.Definitions, instance: dg.DagsterInstance, keys: dict[str, list[str]]) -> DemoReport:
    report = DemoReport()
    for source, job in INGEST_JOBS.items():
        for key in tqdm(keys[source], desc=f"ingest {source} shards", unit="shard"):
            _run(defs, instance, report, job.name, f"raw_{source}_shards[{key}]", key)
    _run(defs, instance, report, catalog_job.name, "raw_catalog")
    result = _run(defs, instance, report, generator_model_job.name, "generator_model")
    if result.success:
        report.sample = _metadata_text(result, "generator_model", "sample")
    _run(defs, instance, report, dedup_job.name, dedup_job.name)
    result = _run(defs, instance, report, edu_classifier_job.name, edu_classifier_job.name)
    if result.success:
        report.classifier = _metadata_text(result, "edu_classifier", "report")
        report.classifier_warnings = _metadata_text(result, "edu_classifier", "warnings")
    for source, job in CORPUS_JOBS.items():
        for key in tqdm(keys[source], desc=f"filter {source} corpus", unit="shard"):
            result = _run(defs, instance, report, job.name, f"filtered_{source}_corpus[{key}]", key)
            _count_corpus(report, source, result)
    _run(defs, instance, report, topics_job.name, "topics")
    for key in tqdm(BATCHES.get_partition_keys(), desc="synthetic batches", unit="batch"):
        result = _run(defs, instance, report, synthetic_batch_job.name, f"synthetic batch {key}", key)
        _count_generation(report, result)
    result = _run(defs, instance, report, synthetic_corpus_job.name, "synthetic_corpus")
    if result.success:
        report.synthetic = _metadata_text(result, "synthetic_corpus", "sets")
    run_mixture(defs, instance, keys, report)
    run_training(defs, instance, report)
    run_evaluation(defs, instance, report)
    return report


TRAINING_STAGES = ("pretrained_checkpoint", "midtrained_checkpoint", "sft_checkpoint", "dpo_checkpoint")


def run_training(defs: dg.Definitions, instance: dg.DagsterInstance, report: DemoReport) -> None:
    """The tiny training chain: pretrain -> midtrain -> SFT -> preference pairs -> DPO."""
    result = _run(defs, instance, report, training_job.name, training_job.name)
    for event in result.get_asset_materialization_events():
        meta = event.materialization.metadata
        name = event.materialization.asset_key.to_user_string()
        report.training[name] = {k: v.value for k, v in meta.items() if not isinstance(v.value, (dict, list))
                                 and k not in ("loss_curve", "examples")}


def run_evaluation(defs: dg.Definitions, instance: dg.DagsterInstance, report: DemoReport) -> None:
    """eval_scores for every stage: the trained checkpoints and the default engine model."""
    for stage in tqdm(list(STAGES), desc="evaluate", unit="stage"):
        result = _run(defs, instance, report, eval_job.name, f"eval_scores[{stage}]", stage)
        for event in result.get_asset_materialization_events():
            meta = {k: v.value for k, v in event.materialization.metadata.items()}
            report.evaluation[stage] = {k: meta[k] for k in ("problems", "verdicts", "engine_errors")}
            report.evaluation[stage].update({k: v for k, v in meta.items() if isinstance(v, float)})
            if meta.get("understanding_detail", {}).get("judge_reliable") is False:
                report.evaluation[stage]["judge"] = "the understanding judge cannot tell right from empty"
            report.eval_table = meta["phi1_table1"]


def run_mixture(defs: dg.Definitions, instance: dg.DagsterInstance, keys: dict[str, list[str]],
                report: DemoReport) -> None:
    """Tokenizer, every tokenized shard, the search's proxies, the search, the weights."""
    _run(defs, instance, report, tokenizer_job.name, "tokenizer")
    for source, job in TOKENIZE_JOBS.items():
        for key in tqdm(keys[source], desc=f"tokenize {source} shards", unit="shard"):
            _run(defs, instance, report, job.name, f"tokenized_filtered_{source}[{key}]", key)
    for key in BATCHES.get_partition_keys():
        _run(defs, instance, report, tokenize_synthetic_job.name, f"tokenize synthetic {key}", key)
    for key in tqdm(PROXIES.get_partition_keys(), desc="mixture search proxies", unit="proxy"):
        _run(defs, instance, report, mixture_proxy_job.name, f"mixture_proxies[{key}]", key)
    result = _run(defs, instance, report, mixture_job.name, mixture_job.name)
    if result.success:
        report.mixture = _metadata_text(result, "mixture_weights", "mixture")
        for event in result.get_asset_materialization_events():
            if event.materialization.asset_key.to_user_string() == "mixture_search":
                meta = event.materialization.metadata
                report.search = {k: meta[k].value for k in ("proposal", "loo_spearman", "predicted_loss",
                                                             "phi4_predicted_loss", "num_proxies")}


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
    for event in result.get_asset_materialization_events():
        if event.materialization.asset_key.to_user_string() == asset:
            value = event.materialization.metadata.get(key)
            return str(value.value) if value is not None else ""
    return ""


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


def _print_evaluation(report: DemoReport) -> None:
    if not report.evaluation:
        return
    print("\neval_scores (greedy pass@1, every sample run in the sandbox; per-sample results in DuckDB):")
    for stage, m in report.evaluation.items():
        scores = ", ".join(f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, float))
        counts = ", ".join(f"{b} {n}" for b, n in m["problems"].items())
        errors = f"; engine errors {m['engine_errors']}" if m["engine_errors"] else ""
        errors += f"; {m['judge']}" if "judge" in m else ""
        print(f"  {stage:10} {scores}  (problems: {counts}{errors})")
    print("beside phi-1's Table 1:")
    print(_plain_table(report.eval_table.replace("**", "")))


def main() -> int:
    profile = load_profile()
    os.environ.setdefault("DAGSTER_HOME", profile.dagster_home)
    os.makedirs(os.environ["DAGSTER_HOME"], exist_ok=True)
    from phi_assets.definitions import defs

    start = time.time()
    with dg.DagsterInstance.get() as instance:
        keys = register_shards(instance, profile)
        report = run_all(defs, instance, keys)
    print(f"\nphi-factory demo on profile '{profile.name}' ({time.time() - start:.0f} s)")
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
    _print_evaluation(report)
    print(f"\nCatalog: {profile.catalog_path}   Artifacts: {profile.artifact_root}")
    print("Open the UI: make ui   (then http://127.0.0.1:3000)")
    print(f"Steps: {len(report.recomputed)} recomputed, {len(report.reused)} unchanged "
          "(code and inputs as before: no work done, same data versions)")
    for failure in report.failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
