"""Tokenizer, packed token shards, mixture weights and search, and the training data loader."""
