"""Jobs: the slices of the graph that people and sensors launch."""

from __future__ import annotations

import dagster as dg

from k8s.steps import GPU_POOL_TAG
from phi_assets.ablations.assets import ABLATIONS, ablation_report, data_ablations
from phi_assets.ablations.raw_tokens import RAW_TOKEN_ASSETS
from phi_assets.curation.assets import (
    edu_annotations,
    edu_classifier,
    filtered_code_corpus,
    filtered_web_corpus,
)
from phi_assets.curation.dedup_assets import (
    BUCKETS,
    dedup_code,
    dedup_code_buckets,
    dedup_code_pairs,
    dedup_code_shingles,
    dedup_web,
    dedup_web_buckets,
    dedup_web_pairs,
    dedup_web_shingles,
)
from phi_assets.curation.filter_assets import quality_filtered_code_shards, quality_filtered_web_shards
from phi_assets.evaluation.assets import eval_scores, eval_stages
from phi_assets.evaluation.model_card import card_stages, model_card
from phi_assets.evaluation.rai import rai_scores
from phi_assets.ingest.assets import (
    code_shards,
    raw_catalog,
    raw_code_shards,
    raw_web_shards,
    web_shards,
)
from phi_assets.mixture.assets import mixture_weights
from phi_assets.mixture.search_assets import PROXIES, mixture_proxies, mixture_search
from phi_assets.mixture.token_assets import TOKENIZED_ASSETS, tokenizer
from phi_assets.models.assets import generator_model
from phi_assets.synthetic.batches import BATCHES
from phi_assets.synthetic.corpus_assets import synthetic_corpus
from phi_assets.synthetic.rewrite_assets import rewritten_web
from phi_assets.synthetic.textbook_assets import synthetic_exercises, synthetic_textbooks
from phi_assets.synthetic.topic_assets import topics
from phi_assets.training.assets import (
    dpo_checkpoint,
    dpo_checkpoint_no_safety,
    judged_pairs,
    midtrained_checkpoint,
    preference_pairs,
    pretrained_checkpoint,
    safety_pairs,
    safety_sft,
    sft_checkpoint,
    sft_checkpoint_no_safety,
    transferred_checkpoint,
)

ingest_code_job = dg.define_asset_job(
    "ingest_code_job", selection=[raw_code_shards, quality_filtered_code_shards], partitions_def=code_shards,
    description="Ingest one raw code shard (one dynamic partition per shard file) and quality-filter it.")
ingest_web_job = dg.define_asset_job(
    "ingest_web_job", selection=[raw_web_shards, quality_filtered_web_shards], partitions_def=web_shards,
    description="Ingest one raw web shard (one dynamic partition per shard file) and quality-filter it.")
catalog_job = dg.define_asset_job(
    "catalog_job", selection=[raw_catalog], description="Rebuild the DuckDB catalog of raw shards.")

generator_model_job = dg.define_asset_job(
    "generator_model_job", selection=[generator_model],
    description="Prepare the generator LLM (convert, hash) and show a sample of its answers.")

dedup_buckets_job = dg.define_asset_job(
    "dedup_buckets_job", selection=[dedup_code_buckets, dedup_web_buckets], partitions_def=BUCKETS,
    description="One LSH bucket partition (band group x hash range) of both sources: candidate pairs from "
                "every shard's slices, and the rows they need.")
dedup_shingles_code_job = dg.define_asset_job(
    "dedup_shingles_code_job", selection=[dedup_code_shingles], partitions_def=code_shards,
    description="One code shard's candidate rows, read once, as shingle sets for every bucket partition.")
dedup_shingles_web_job = dg.define_asset_job(
    "dedup_shingles_web_job", selection=[dedup_web_shingles], partitions_def=web_shards,
    description="One web shard's candidate rows, read once, as shingle sets for every bucket partition.")
dedup_pairs_job = dg.define_asset_job(
    "dedup_pairs_job", selection=[dedup_code_pairs, dedup_web_pairs], partitions_def=BUCKETS,
    description="One bucket partition of both sources: its candidate pairs confirmed on the exact Jaccard "
                "similarity of their shingle sets.")
dedup_job = dg.define_asset_job(
    "dedup_job", selection=[dedup_code, dedup_web],
    description="Clusters of the confirmed duplicate pairs of each source and a removal list per shard.")
edu_classifier_job = dg.define_asset_job(
    "edu_classifier_job", selection=[edu_annotations, edu_classifier],
    description="Annotate a sample with the generator LLM and train the educational-value classifiers.")
filter_code_corpus_job = dg.define_asset_job(
    "filter_code_corpus_job", selection=[filtered_code_corpus], partitions_def=code_shards,
    description="Score, threshold and decontaminate one code shard.")
filter_web_corpus_job = dg.define_asset_job(
    "filter_web_corpus_job", selection=[filtered_web_corpus], partitions_def=web_shards,
    description="Score, threshold and decontaminate one web shard.")

topics_job = dg.define_asset_job(
    "topics_job", selection=[topics],
    description="Curated topics plus topics mined from clusters of the filtered corpora.")
synthetic_batch_job = dg.define_asset_job(
    "synthetic_batch_job", selection=[synthetic_textbooks, synthetic_exercises, rewritten_web],
    partitions_def=BATCHES,
    description="Generate one batch of textbooks, verified exercises and web rewrites (one vLLM server per "
                "batch on Kubernetes).")
synthetic_corpus_job = dg.define_asset_job(
    "synthetic_corpus_job", selection=[synthetic_corpus],
    description="Deduplicate every synthetic set and measure its diversity and coverage.")

tokenizer_job = dg.define_asset_job(
    "tokenizer_job", selection=[tokenizer],
    description="Train the byte-level BPE tokenizer on the filtered corpora (or copy a pretrained one).")
tokenize_code_job = dg.define_asset_job(
    "tokenize_code_job", selection=[TOKENIZED_ASSETS["filtered_code"], RAW_TOKEN_ASSETS["code"]],
    partitions_def=code_shards,
    description="Tokenize one code shard into packed token shards: its filtered corpus, and its raw documents "
                "for the data ablations.")
tokenize_web_job = dg.define_asset_job(
    "tokenize_web_job", selection=[TOKENIZED_ASSETS["filtered_web"], RAW_TOKEN_ASSETS["web"]],
    partitions_def=web_shards,
    description="Tokenize one web shard into packed token shards: its filtered corpus, and its raw documents "
                "for the data ablations.")
tokenize_synthetic_job = dg.define_asset_job(
    "tokenize_synthetic_job",
    selection=[TOKENIZED_ASSETS[s] for s in ("synthetic_textbooks", "synthetic_exercises", "rewritten_web")],
    partitions_def=BATCHES,
    description="Tokenize one hash batch of each synthetic set (textbooks, exercises, rewrites).")
mixture_proxy_job = dg.define_asset_job(
    "mixture_proxy_job", selection=[mixture_proxies], partitions_def=PROXIES,
    description="Train one RegMix proxy model on its sampled mixture and record its validation losses.")
mixture_job = dg.define_asset_job(
    "mixture_job", selection=[mixture_search, mixture_weights],
    description="Fit the mixture search over the proxies, then compute the mixture weights and epochs table.")

INGEST_JOBS = {"code": ingest_code_job, "web": ingest_web_job}
CORPUS_JOBS = {"code": filter_code_corpus_job, "web": filter_web_corpus_job}
training_job = dg.define_asset_job(
    "training_job", selection=[pretrained_checkpoint, midtrained_checkpoint, safety_sft, safety_pairs,
                               sft_checkpoint, preference_pairs, judged_pairs, dpo_checkpoint],
    tags=GPU_POOL_TAG,
    description="The training chain: pretrain on the mixture, midtrain (long context), SFT (with safety "
                "examples), preference pairs from the SFT policy (verified by execution and judged by an LLM), "
                "DPO (with safety pairs). Each stage resumes from its last checkpoint when retried.")
posttraining_job = dg.define_asset_job(
    "posttraining_job", selection=[safety_sft, safety_pairs, sft_checkpoint, preference_pairs, judged_pairs,
                                   dpo_checkpoint],
    tags=GPU_POOL_TAG,
    description="SFT, preference pairs (execution-verified and LLM-judged) and DPO from the current midtrained "
                "checkpoint, with the safety data mixed into SFT and DPO.")
safety_job = dg.define_asset_job(
    "safety_job", selection=[sft_checkpoint_no_safety, dpo_checkpoint_no_safety, rai_scores], tags=GPU_POOL_TAG,
    description="The responsible-AI evaluation: post-train the control without the safety data, then score "
                "refusal and over-refusal of both post-trained models on the held-out safety requests.")

pretrain_job = dg.define_asset_job(
    "pretrain_job", selection=[pretrained_checkpoint, midtrained_checkpoint], tags=GPU_POOL_TAG,
    description="Pretrain on the current mixture, then midtrain (long context); no post-training.")

transfer_job = dg.define_asset_job(
    "transfer_job", selection=[transferred_checkpoint], tags=GPU_POOL_TAG,
    description="Scaled knowledge transfer: expand the current pretrained checkpoint (function-preserving) and "
                "pretrain it, beside the same shape from random init; the steps each takes to the target loss.")

# Dagster runs one partitions definition per run: the per-shard and per-batch steps have their own jobs
# (and the automation sensor); this slice refreshes every cross-shard roll-up of the data side in order.
data_refresh_job = dg.define_asset_job(
    "data_refresh_job",
    selection=[raw_catalog, dedup_code, dedup_web, edu_annotations, edu_classifier, topics, tokenizer,
               synthetic_corpus, mixture_search, mixture_weights],
    description="Refresh the data side's roll-ups over the current shards and batches: catalog, dedup, "
                "annotations and classifier, topics, tokenizer, synthetic corpus, mixture search and weights.")

eval_job = dg.define_asset_job(
    "eval_job", selection=[eval_scores], partitions_def=eval_stages,
    description="Evaluate one stage (pretrained, midtrained, sft, dpo, or the reference engine model) on "
                "HumanEval and MBPP in the sandbox.")

model_card_job = dg.define_asset_job(
    "model_card_job", selection=[model_card], partitions_def=card_stages,
    description="The model card of one trained stage (after its eval_scores): architecture, recipe, mixture, "
                "decontamination, scores beside phi-1's, and the data version of everything upstream.")

ablation_job = dg.define_asset_job(
    "ablation_job", selection=[data_ablations], partitions_def=ABLATIONS, tags=GPU_POOL_TAG,
    description="Train and score one data-ablation model: one arm (data recipe) with one seed.")
ablation_report_job = dg.define_asset_job(
    "ablation_report_job", selection=[ablation_report],
    description="Compare the ablation arms: means and 95% intervals over seeds, paired differences with raw.")

SHINGLES_JOBS = {"code": dedup_shingles_code_job, "web": dedup_shingles_web_job}
ALL_JOBS = [ingest_code_job, ingest_web_job, catalog_job, generator_model_job, dedup_buckets_job,
            dedup_shingles_code_job, dedup_shingles_web_job, dedup_pairs_job, dedup_job,
            edu_classifier_job,
            filter_code_corpus_job, filter_web_corpus_job, topics_job, synthetic_batch_job,
            synthetic_corpus_job, tokenizer_job, tokenize_code_job, tokenize_web_job, tokenize_synthetic_job,
            mixture_proxy_job, mixture_job, data_refresh_job, training_job, pretrain_job, posttraining_job,
            transfer_job, safety_job,
            eval_job, model_card_job, ablation_job, ablation_report_job]
TOKENIZE_JOBS = {"code": tokenize_code_job, "web": tokenize_web_job}
