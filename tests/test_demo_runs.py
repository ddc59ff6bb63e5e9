"""The demo's plan: which steps wait for which, how many run at once, and on which CPUs."""

from __future__ import annotations

import threading
import time

import pytest

from phi_assets.demo_runs import Step, cpu_groups, default_workers, dependencies, run_plan


def test_cpu_groups_are_disjoint_and_cover_every_cpu():
    assert cpu_groups(2, [0, 1]) == [[0], [1]]
    assert cpu_groups(2, [0, 1, 2, 3, 4]) == [[0, 1, 2], [3, 4]]
    assert cpu_groups(3, list(range(16))) == [list(range(6)), list(range(6, 11)), list(range(11, 16))]
    assert cpu_groups(2, [5]) == []  # fewer CPUs than workers: unpinned
    assert cpu_groups(1, [0, 1]) == []  # one at a time: every CPU


def test_workers_come_from_the_environment_or_the_cpus():
    assert default_workers({"PHI_DEMO_WORKERS": "3"}) == 3
    assert 1 <= default_workers({}) <= 2
    for bad in ("0", "two", "-1"):
        with pytest.raises(ValueError, match=f"PHI_DEMO_WORKERS must be a positive integer, got '{bad}'"):
            default_workers({"PHI_DEMO_WORKERS": bad})


def test_a_step_waits_for_the_steps_that_write_its_ancestors():
    """Read off the real asset graph: evaluation waits for training, which waits for the mixture; the
    ablations read the mixture too but no checkpoint, so they do not wait for training."""
    from phi_assets.definitions import defs

    steps = [
        Step("ingest_code_job", "raw code", "a"),
        Step("ingest_code_job", "raw code", "b"),
        Step("catalog_job", "raw_catalog"),
        Step("mixture_job", "mixture_job"),
        Step("training_job", "training_job"),
        Step("ablation_job", "data_ablations[raw/0]", "raw/0"),
        Step("eval_job", "eval_scores[dpo]", "dpo"),
    ]
    deps = dependencies(defs, steps)
    assert deps[0] == deps[1] == set()  # two partitions of one slice: side by side
    assert deps[2] == {0, 1}  # the catalog reads every raw shard
    assert {0, 1} <= deps[3] and 4 not in deps[3]
    assert 3 in deps[4] and {0, 1} <= deps[4]
    assert 4 not in deps[5] and 3 in deps[5] and {0, 1} <= deps[5]
    assert 4 in deps[6] and 5 not in deps[6]


def test_a_step_with_after_waits_for_those_assets_only():
    """The demo's evaluation of the reference model (it reads generator_model, not a checkpoint) is planned
    after the generator and the mixture, beside the training chain; a checkpoint's evaluation waits for it."""
    from phi_assets import demo  # the plan only: nothing runs
    from phi_assets.definitions import defs

    steps = demo.plan(demo.DemoReport(), {"code": ["a"], "web": ["b"]})
    deps = dependencies(defs, steps)
    index = {s.what: i for i, s in enumerate(steps)}
    training, mixture = index["training_job"], index["mixture_job"]
    assert deps[index["eval_scores[reference]"]] == {index["generator_model"], mixture}
    assert training in deps[index["eval_scores[dpo]"]] and training > mixture
    assert steps[index["eval_scores[dpo]"]].after == ()
    # a model card reads the ablation report too: it waits for it and for every evaluation
    evaluations = {i for s, i in index.items() if s.startswith("eval_scores[")}
    for stage in ("pretrained", "dpo"):
        assert deps[index[f"model_card[{stage}]"]] == evaluations | {index["ablation_report"]}


def test_the_plan_runs_each_step_after_its_dependencies_at_most_workers_at_once():
    """Steps 0-3 are independent, 4 waits for 0 and 1, 5 for 2 and 4. With two workers, the two steps that run
    at once are on different CPU groups; a step that starts alone gets every CPU (no group)."""
    deps = [set(), set(), set(), set(), {0, 1}, {2, 4}]
    steps = [Step("job", f"s{i}") for i in range(len(deps))]
    lock, running, peak, started, ended, cpus_of, order = threading.Lock(), set(), [0], {}, {}, {}, []

    def execute(step: Step, cpus) -> str:
        i = int(step.what[1:])
        with lock:
            assert not cpus or all(set(cpus).isdisjoint(cpus_of[j]) for j in running)
            running.add(i)
            peak[0] = max(peak[0], len(running))
            started[i], cpus_of[i] = time.monotonic(), tuple(cpus)
        time.sleep(0.05 if i != 2 else 0.3)
        with lock:
            running.discard(i)
            ended[i] = time.monotonic()
        return step.what

    run_plan(steps, deps, execute, lambda s, r: order.append(r), workers=2)
    assert sorted(order) == [s.what for s in steps]  # every step once, its result handed to ``done``
    assert peak[0] == 2
    for i, needs in enumerate(deps):
        assert all(started[i] >= ended[j] for j in needs)
    assert cpus_of[5] == ()  # the last step, alone: every CPU


def test_one_worker_runs_the_plan_in_order():
    steps = [Step("job", f"s{i}") for i in range(4)]
    seen: list[str] = []
    run_plan(steps, [set()] * 4, lambda s, cpus: (cpus, s.what), lambda s, r: seen.append(r), workers=1)
    assert seen == [((), "s0"), ((), "s1"), ((), "s2"), ((), "s3")]


def test_the_suite_starts_with_its_longest_files_and_each_exists():
    """``make test`` hands whole files to its workers in collection order: the longest first."""
    from pathlib import Path

    from tests.support.workers import LONGEST_FILES, longest_first

    tests = Path(__file__).parent
    assert [name for name in LONGEST_FILES if not (tests / name).is_file()] == []

    class Item:
        def __init__(self, name: str) -> None:
            self.path = tests / name

    items = [Item(n) for n in ("test_a.py", LONGEST_FILES[1], "test_b.py", LONGEST_FILES[0], LONGEST_FILES[1])]
    longest_first(items)
    assert [i.path.name for i in items] == [LONGEST_FILES[0], LONGEST_FILES[1], LONGEST_FILES[1], "test_a.py",
                                            "test_b.py"]
