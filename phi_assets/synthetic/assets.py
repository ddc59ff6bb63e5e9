"""Synthetic data assets (group ``synthetic``): data written for learning (phi-1, phi-1.5, phi-4).

- ``topics`` (``topic_assets.py``): curated topics plus topics mined from clusters of the filtered
  corpora.
- ``synthetic_textbooks``, ``synthetic_exercises`` (``textbook_assets.py``), ``rewritten_web``
  (``rewrite_assets.py``): partitioned by batch (one step, and on Kubernetes one pod talking to the
  GPU pool's vLLM servers, per batch). Each batch generates through the LLM engine, whose request
  cache makes a killed run resume where it stopped; validates every candidate (failures are rows
  with reasons); removes HumanEval/MBPP matches (blocking ``decontaminated`` check); exercises are
  executed in the evaluation sandbox. What the three share is in ``batches.py``.
- ``synthetic_corpus`` (``corpus_assets.py``): every batch of the three sets, fuzzy-deduplicated
  within each set, with diversity and coverage measures and checks: what training reads.

The work itself is in ``generate.py`` and ``exercises.py`` (requests, parsing, validation),
``topics.py`` and ``gates.py``; prompts are files in ``prompts/``, part of the code versions.
"""

from phi_assets.synthetic.corpus_assets import synthetic_corpus
from phi_assets.synthetic.rewrite_assets import rewritten_web
from phi_assets.synthetic.textbook_assets import synthetic_exercises, synthetic_textbooks
from phi_assets.synthetic.topic_assets import topics

SYNTHETIC_ASSETS = [topics, synthetic_textbooks, synthetic_exercises, rewritten_web, synthetic_corpus]
