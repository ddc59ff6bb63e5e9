"""The demo's runs: one Dagster run per step (a slice, or one partition of it), in this process or through
``dagster asset materialize``; through the CLI, independent steps run side by side.

A plan is a list of ``Step`` in a valid order. A step waits for every earlier step that materializes an
ancestor of one of its assets (read off the asset graph: ``dependencies``), so two steps run at once only
when neither reads what the other writes, and the plan's order decides who goes first. Through the CLI up to
``workers`` commands run at once (``PHI_DEMO_WORKERS``; by default one per CPU, at most 2). A command that
starts beside others gets its own share of this process's CPUs (``cpu_groups``): torch and vLLM's OpenMP
start a thread per CPU they may use, and two such pools on the same cores contend (spinning threads) where
two on separate cores do not. A command that starts alone gets every CPU. Most steps are small and spend
their time starting a process and loading the code location, on one core: on 2 cores the ci graph's
wall time falls by about a third.

In process (``make demo``), the plan runs one step at a time, in order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import dagster as dg

from jobs import ALL_JOBS

MAX_DEFAULT_WORKERS = 2  # beyond two, a 2-core machine gains nothing and larger ones run the demo in minutes


@dataclass
class Step:
    """One run: ``job_name`` (for one ``partition``), reported as ``what``; ``then`` reads its result.
    ``after``: the assets whose steps it waits for, in place of every ancestor of its job's assets (a partition
    that reads fewer of them than its asset declares, scheduled where a CPU would otherwise wait)."""

    job_name: str
    what: str
    partition: str | None = None
    then: Callable[[object], None] | None = None
    after: tuple[str, ...] = ()


@dataclass
class CliRun:
    """A run that `dagster asset materialize` executed, read back from the instance."""

    run_id: str
    success: bool
    all_events: list = field(default_factory=list)
    error: str = ""  # why no run started

    def get_asset_materialization_events(self) -> list:
        return [e for e in self.all_events if e.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION]


def default_workers(env: dict[str, str] | None = None) -> int:
    """``PHI_DEMO_WORKERS`` when set (a positive integer), else one per CPU this process may use, at most 2."""
    env = os.environ if env is None else env
    given = env.get("PHI_DEMO_WORKERS", "").strip()
    if given:
        if not given.isdigit() or int(given) < 1:
            raise ValueError(f"PHI_DEMO_WORKERS must be a positive integer, got {given!r}")
        return int(given)
    return max(1, min(MAX_DEFAULT_WORKERS, len(_cpus())))


def _cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # no CPU affinity on this platform: commands are not pinned
        return []


def cpu_groups(workers: int, cpus: Sequence[int] | None = None) -> list[list[int]]:
    """``cpus`` (default: this process's) split into ``workers`` disjoint groups, as even as they go; none
    (commands unpinned) where there is no affinity to set or fewer CPUs than workers."""
    cpus = list(_cpus() if cpus is None else cpus)
    if workers < 2 or len(cpus) < workers:
        return []
    size, extra = divmod(len(cpus), workers)
    groups, start = [], 0
    for i in range(workers):
        end = start + size + (1 if i < extra else 0)
        groups.append(cpus[start:end])
        start = end
    return groups


def job_keys(defs: dg.Definitions, job_name: str) -> set[dg.AssetKey]:
    """The asset keys a job materializes."""
    return set(next(j for j in ALL_JOBS if j.name == job_name).selection.resolve(defs.resolve_asset_graph()))


def dependencies(defs: dg.Definitions, steps: Sequence[Step]) -> list[set[int]]:
    """For each step, the earlier steps it waits for: those materializing an ancestor of one of its assets
    (other than its own assets: a slice's partitions are independent runs), or one of its ``after`` assets."""
    graph = defs.resolve_asset_graph()
    ancestors: dict[dg.AssetKey, set[dg.AssetKey]] = {}

    def up(key: dg.AssetKey) -> set[dg.AssetKey]:
        if key not in ancestors:
            ancestors[key] = set()
            for parent in graph.get(key).parent_keys:
                ancestors[key] |= {parent} | up(parent)
        return ancestors[key]

    keys = {name: job_keys(defs, name) for name in {s.job_name for s in steps}}
    # A job's own assets are not waited for: two partitions of one slice run side by side.
    needs = [{dg.AssetKey(a) for a in s.after} if s.after
             else set().union(*(up(k) for k in keys[s.job_name])) - keys[s.job_name] for s in steps]
    return [{i for i in range(j) if keys[steps[i].job_name] & needs[j]} for j in range(len(steps))]


def materialize_cli(defs: dg.Definitions, instance: dg.DagsterInstance, job_name: str, partition: str | None,
                    run_config: dict, cpus: Sequence[int] | None = None) -> CliRun:
    """``dagster asset materialize`` for the job's assets (and this partition) in a child process, on
    ``cpus`` when given; its run is found by its asset selection, partition and creation time."""
    selection = job_keys(defs, job_name)
    assets = ",".join(sorted(k.to_user_string() for k in selection))
    dagster = os.path.join(os.path.dirname(sys.executable), "dagster")
    command = [dagster, "asset", "materialize", "-m", "phi_assets.definitions", "--select", assets,
               "--config-json", json.dumps(run_config)]
    command += ["--partition", partition] if partition else []
    if cpus:  # pinned before exec: the command and everything it starts inherit the CPUs
        pin = "import os, sys; os.sched_setaffinity(0, {int(c) for c in sys.argv[1].split(',')}); " \
              "os.execv(sys.argv[2], sys.argv[2:])"
        command = [sys.executable, "-c", pin, ",".join(map(str, cpus)), *command]
    created_after = datetime.now(UTC) - timedelta(seconds=1)
    started = time.time()
    done = subprocess.run(command, capture_output=True, text=True)
    where = f" --partition {partition}" if partition else ""
    on = f" [cpus {','.join(map(str, cpus))}]" if cpus else ""
    print(f"dagster asset materialize --select {assets}{where}: exit {done.returncode} "
          f"({time.time() - started:.0f} s){on}", file=sys.stderr, flush=True)
    tags = {"dagster/partition": partition} if partition else None
    runs = [r for r in instance.get_runs(filters=dg.RunsFilter(tags=tags, created_after=created_after))
            if set(r.asset_selection or ()) == selection and (partition or not r.tags.get("dagster/partition"))]
    if not runs:  # the command failed before its run (a bad selection, say): reported, the demo goes on
        tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
        return CliRun("", False, [], error=f"`dagster asset materialize --select {assets}` started no run "
                                            f"(exit {done.returncode}): {tail[0]}")
    run = runs[0]  # newest first
    events = [e.dagster_event for e in instance.all_logs(run.run_id) if e.dagster_event is not None]
    return CliRun(run.run_id, done.returncode == 0 and run.status == dg.DagsterRunStatus.SUCCESS, events)


def run_plan(steps: Sequence[Step], deps: Sequence[set[int]], execute: Callable[[Step, Sequence[int]], object],
             done: Callable[[Step, object], None], workers: int = 1, progress: Callable[[], None] = lambda: None
             ) -> None:
    """Every step, each once its ``deps`` have finished (failed or not: a failure is reported, not fatal),
    up to ``workers`` at once and earliest first. ``execute(step, cpus)`` runs one (``cpus`` empty: every
    CPU); ``done(step, result)`` is called in this thread, as each finishes."""
    if workers < 2:
        for step in steps:
            done(step, execute(step, ()))
            progress()
        return
    groups = cpu_groups(workers)
    pending, finished = list(range(len(steps))), set()
    running: dict[Future, tuple[int, int | None]] = {}  # future -> (step, its CPU group)
    with ThreadPoolExecutor(workers) as pool:
        while pending or running:
            ready = [i for i in pending if deps[i] <= finished][: workers - len(running)]
            alone = not running and len(ready) == 1
            used = {group for _, group in running.values()}
            free = [g for g in range(len(groups)) if g not in used]
            for i in ready:
                group = None if alone or not free else free.pop(0)
                cpus = groups[group] if group is not None else ()
                running[pool.submit(execute, steps[i], cpus)] = (i, group)
                pending.remove(i)
            complete, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in complete:
                i, _ = running.pop(future)
                finished.add(i)
                done(steps[i], future.result())
                progress()
