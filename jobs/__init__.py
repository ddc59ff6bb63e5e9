"""Jobs: the slices of the graph that people and sensors launch."""

from __future__ import annotations

import dagster as dg

from phi_assets.ingest.assets import (
    code_shards,
    raw_catalog,
    raw_code_shards,
    raw_web_shards,
    web_shards,
)
from phi_assets.synthetic.assets import generator_model

ingest_code_job = dg.define_asset_job(
    "ingest_code_job", selection=[raw_code_shards], partitions_def=code_shards,
    description="Ingest one raw code shard (one dynamic partition per shard file).")
ingest_web_job = dg.define_asset_job(
    "ingest_web_job", selection=[raw_web_shards], partitions_def=web_shards,
    description="Ingest one raw web shard (one dynamic partition per shard file).")
catalog_job = dg.define_asset_job(
    "catalog_job", selection=[raw_catalog], description="Rebuild the DuckDB catalog of raw shards.")

generator_model_job = dg.define_asset_job(
    "generator_model_job", selection=[generator_model],
    description="Prepare the generator LLM (convert, hash) and show a sample of its answers.")

INGEST_JOBS = {"code": ingest_code_job, "web": ingest_web_job}
ALL_JOBS = [ingest_code_job, ingest_web_job, catalog_job, generator_model_job]
