"""Kubernetes manifests rendered from the project's Python configuration (never hand-copied YAML)."""
