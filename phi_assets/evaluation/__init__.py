"""Evaluation: HumanEval/MBPP pass@k of every checkpoint stage (``eval_scores``) and its model card."""
