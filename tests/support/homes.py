"""Homes the tests point the code location at: the environment that selects one, and copies of one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

#: Variables that would point parts of a home elsewhere; a test home unsets them.
HOME_OVERRIDES = ("DAGSTER_HOME", "PHI_ARTIFACT_ROOT", "PHI_LANDING_ROOT", "PHI_CATALOG")


def use_ci_home(monkeypatch: pytest.MonkeyPatch, home: Path) -> Path:
    """Point the environment at ``home`` on the ``ci`` profile, nothing overridden."""
    monkeypatch.setenv("PHI_PROFILE", "ci")
    monkeypatch.setenv("PHI_HOME", str(home))
    for var in HOME_OVERRIDES:
        monkeypatch.delenv(var, raising=False)
    return home


def copy_home(source: Path, target: Path) -> None:
    """A copy of a home that leaves ``source`` as it was: artifacts, training runs and models hard-linked
    (versions are immutable; pointers are replaced, never edited), the Dagster instance and the rest
    copied."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.is_dir():
            link = entry.name in ("artifacts", "runs", "models")
            shutil.copytree(
                entry, target / entry.name, copy_function=os.link if link else shutil.copy2, symlinks=True
            )
        else:
            shutil.copy2(entry, target / entry.name)
