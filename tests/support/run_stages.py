"""Run entrypoint configs one after another in one process group: ``python -m tests.support.run_stages
CONFIG...`` (under torchrun), so a test trains several stages for the price of one launch. Rank 0
prints the summaries as one JSON list."""

from __future__ import annotations

import json
import sys

from phi_assets.training import distributed, entrypoint


def main(paths: list[str]) -> None:
    summaries = [entrypoint.run(entrypoint.load_config(p)) for p in paths]
    if distributed.World.from_env().rank == 0:
        print(json.dumps(summaries))
    distributed.teardown()


if __name__ == "__main__":
    main(sys.argv[1:])
