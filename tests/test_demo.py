"""`make demo`'s program on the ci profile: everything materializes, and a rerun does no work."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from resources import ArtifactStore

ROOT = Path(__file__).resolve().parents[1]


def run_demo(env: dict) -> str:
    done = subprocess.run([sys.executable, "-m", "phi_assets.demo"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def current_versions(store: ArtifactStore) -> dict[str, str]:
    root = Path(store.root)
    return {str(p.parent.relative_to(root)): p.read_text() for p in root.glob("*/*/CURRENT")}


def test_demo_materializes_everything_then_recomputes_nothing(phi_home):
    env = {**os.environ, "PHI_PROFILE": "ci", "PHI_HOME": str(phi_home)}
    env.pop("DAGSTER_HOME", None)
    first = run_demo(env)
    counts = dict(re.findall(r"^(code|web)\s+\d+\s+\d+\s+(\d+)", first, re.M))
    assert int(counts["code"]) > 50 and int(counts["web"]) > 50
    # 2 code + 3 web shards, the catalog, and generator_model
    assert re.search(r"Steps: 7 recomputed, 0 unchanged", first)
    assert "generator_model sample" in first and "Fibonacci" in first  # real answers, printed
    store = ArtifactStore(root=str(phi_home / "artifacts"))
    before = current_versions(store)
    assert len(before) == 7 and (phi_home / "dagster").is_dir()  # DAGSTER_HOME inside PHI_HOME

    second = run_demo(env)
    assert re.search(r"Steps: 0 recomputed, 7 unchanged", second)
    assert second.count("inputs unchanged; skipping work") == 7
    assert "generator_model sample: 3 requests, 3 from the cache, 0 to generate" in second
    assert current_versions(store) == before
