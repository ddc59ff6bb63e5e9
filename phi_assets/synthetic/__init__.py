"""Synthetic data (group ``synthetic``): the generator model, and later textbooks and exercises."""
