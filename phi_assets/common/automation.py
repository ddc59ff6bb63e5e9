"""Declarative automation: which assets follow new data by themselves.

The per-shard curation path and the roll-ups that only count what it produced update when their
inputs change: a new shard's quality filter, the source's dedup (bucket partitions, then clusters),
every filtered-corpus shard (dedup decides what each keeps), each filtered shard's tokens, the
catalog; the mixture weights (the
token counts feed the epochs table). They run under ``ON_NEW_DATA``: Dagster's ``eager`` condition
(an input was updated or the partition is new; no input missing or in progress) and only while every
input's blocking checks pass (the raw shards' Great Expectations suite, the corpora's
decontamination check), so a shard that fails its expectations stops there. The roll-ups over all
shards (catalog, dedup's buckets and clusters, mixture weights) use ``ON_NEW_PARTITIONS``, the same
less "no input missing": a shard that stopped (or was quarantined) must not hold back the ones after it.

Left to people or policies on purpose: the LLM annotations and the classifier, topics and synthetic
data (expensive, and new text is a decision), the tokenizer (a new one changes every token id), the
mixture search's proxies (training runs), and every checkpoint: the retraining policy
(``sensors/retraining.py``) requests a training run when the mixture's data version changes.

``automation_sensor`` (``sensors/automation.py``) evaluates the conditions every 30 s; it is on
by default.
"""

from __future__ import annotations

import dagster as dg

VERSION_EXEMPT = "automation conditions decide when an asset runs, not what it writes"

ON_NEW_DATA = (
    dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()
).with_label("eager, inputs' blocking checks passed")

# The roll-ups over every partition of a shard asset (catalog, dedup, mixture weights) read the partitions
# that are materialized and leave the others out with a warning. A shard that never materializes (a
# corrupt file, quarantined; one whose expectations failed) must not hold back every later shard, so
# their condition is eager's without "no input missing".
ON_NEW_PARTITIONS = (
    dg.AutomationCondition.in_latest_time_window()
    & (dg.AutomationCondition.newly_missing() | dg.AutomationCondition.any_deps_updated()).since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
    & dg.AutomationCondition.all_deps_blocking_checks_passed()
).with_label("eager over the materialized partitions, inputs' blocking checks passed")
