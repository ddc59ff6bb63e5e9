"""The ci home the demo tests share (the session fixture ``demo_run``): what is planted in its landing
area before ``make demo``'s program runs on it, and that program's run.

Planted: an English article in two web files (an exact copy across shards) plus a near-copy, and a
HumanEval task inside an otherwise ordinary code file (tests/test_curation_assets.py checks what the run
made of them). ``make ci-graph`` plants its home with ``python -m tests.support.demo_home HOME``, which
prints the planted task id.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from resources import load_profile
from tests.support.files import landing, write_jsonl
from tests.support.homes import HOME_OVERRIDES

ROOT = Path(__file__).resolve().parents[2]
ARTICLE = (
    " ".join(
        [
            "Plants make their own food through a process called photosynthesis.",
            "In the leaves, a green pigment named chlorophyll captures the energy of sunlight.",
            "The plant takes in carbon dioxide from the air through tiny openings called stomata.",
            "It also draws water from the soil through its roots and carries it up the stem.",
            "Using the captured energy, the plant turns the water and the carbon dioxide into sugar.",
            "Oxygen is released into the air as a by-product of this reaction, and animals breathe it.",
            "The sugar is stored as starch or used to build new cells, so the plant can grow taller.",
            "Scientists measure photosynthesis by counting the bubbles of oxygen a water plant gives off.",
            "When the light is brighter, the plant makes more bubbles, until some other factor limits it.",
            "Temperature matters too, because the enzymes that drive the reaction work best when it is warm.",
            "Farmers use this knowledge when they grow vegetables in greenhouses during the winter months.",
            "They add light and warmth and sometimes even extra carbon dioxide to help the crops grow faster.",
            "Without photosynthesis there would be no food for animals and no oxygen for them to breathe.",
            "That is why forests and ocean algae are often described as the lungs of the planet we live on.",
        ]
    )
    + "\n"
)
NEAR_COPY = ARTICLE.replace("tiny openings", "small openings").replace("winter months", "cold months")


def humaneval_file() -> tuple[str, str]:
    from phi_assets.common.benchmarks import load_humaneval

    task = load_humaneval()[12]
    text = (
        'import os\nimport sys\n\n\ndef read_config(path):\n    """Read a key=value file."""\n'
        "    out = {}\n    with open(path) as f:\n        for line in f:\n            key, _, value = "
        "line.partition('=')\n            out[key.strip()] = value.strip()\n    return out\n\n\n"
        + task.prompt
        + task.solution
        + "\n\nif __name__ == '__main__':\n    print(read_config(sys.argv[1]))\n"
    )
    return task.task_id, text


def plant(home: Path) -> str:
    """Landing shards the demo picks up; returns the planted HumanEval task id."""
    task_id, code = humaneval_file()
    profile = load_profile({"PHI_PROFILE": "ci", "PHI_HOME": str(home)})
    for source, name, rows in (
        ("code", "planted.jsonl", [{"text": code}]),
        ("web", "article-a.jsonl", [{"text": ARTICLE}]),
        ("web", "article-b.jsonl", [{"text": ARTICLE}, {"text": NEAR_COPY}]),
    ):
        write_jsonl(landing(profile, source) / name, rows)
    return task_id


def run_demo(home: Path, mbpp_path: Path) -> str:
    """``make demo``'s program (``python -m phi_assets.demo``) once on the ci profile in ``home``; its
    output. Fails with the output's tail when it fails."""
    env = {**os.environ, "PHI_PROFILE": "ci", "PHI_HOME": str(home), "PHI_MBPP_PATH": str(mbpp_path)}
    for var in HOME_OVERRIDES:
        env.pop(var, None)
    done = subprocess.run([sys.executable, "-m", "phi_assets.demo"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done.stdout + done.stderr


if __name__ == "__main__":  # `python -m tests.support.demo_home HOME`: plant into HOME, print the task id
    print(plant(Path(sys.argv[1])))
