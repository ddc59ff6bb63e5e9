"""Ingest: raw code and web shards in one document schema (see docs/data-model.md)."""
