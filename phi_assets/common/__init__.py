"""Shared libraries every stage uses: artifact-store lookups, versioning, tables and plots, benchmark
loaders, decontamination, sentence embeddings, model files. Imports no stage and no resource."""
