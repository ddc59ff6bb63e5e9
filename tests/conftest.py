"""Shared fixtures: an isolated PHI_HOME on the ``ci`` profile, its store and a Dagster instance."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import dagster as dg
import pytest

from resources import ArtifactStore, build_resources, load_profile
from resources.profiles import Profile


@pytest.fixture(scope="session")
def smol_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default generator model (SmolLM2-135M-Instruct GGUF) converted once per session."""
    from phi_assets.synthetic import model

    out = tmp_path_factory.mktemp("smollm2") / "model"
    model.convert_gguf(model.default_gguf_path(), out)
    return out


@pytest.fixture
def phi_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "phi"
    monkeypatch.setenv("PHI_PROFILE", "ci")
    monkeypatch.setenv("PHI_HOME", str(home))
    for var in ("DAGSTER_HOME", "PHI_ARTIFACT_ROOT", "PHI_LANDING_ROOT", "PHI_CATALOG"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def profile(phi_home: Path) -> Profile:
    return load_profile()


@pytest.fixture
def store(profile: Profile) -> ArtifactStore:
    return ArtifactStore(root=profile.artifact_root)


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def resources(profile: Profile) -> dict:
    return build_resources(profile)


def landing(profile: Profile, source: str) -> Path:
    path = Path(profile.landing_uri(source))
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_jsonl(path: Path, rows: list, compress: bool = False) -> Path:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def materialize_shard(asset, key: str, instance, resources, run_config=None):
    instance.add_dynamic_partitions(asset.partitions_def.name, [key])
    return dg.materialize([asset], partition_key=key, instance=instance, resources=resources,
                          run_config=run_config, raise_on_error=False)
