"""Evaluation: the code-execution sandbox, and later HumanEval/MBPP scoring."""
