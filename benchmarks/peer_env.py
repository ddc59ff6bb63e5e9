"""The peer interpreter: the separate environment (``make .venv-bench/.installed-stamp``) in which the
benchmarks run the tools a user would otherwise pick (datatrove, spaCy). The product never imports them."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / ".venv-bench" / "bin" / "python"


def interpreter(value: str) -> str:
    """An absolute path, fixed before any peer runs in another working directory. Not ``resolve()``: a
    virtualenv's ``bin/python`` is a symlink to the base interpreter, and following it leaves the venv."""
    return os.path.abspath(value)


def add_argument(ap: argparse.ArgumentParser, holds: str) -> None:
    ap.add_argument("--peer-python", type=interpreter, default=str(DEFAULT),
                    help=f"interpreter with {holds} installed (default: {DEFAULT.relative_to(ROOT)})")


def require(path: str, alternative: str = "") -> None:
    """Stop with one line when the peer's interpreter is missing."""
    if not Path(path).exists():
        raise SystemExit(f"--peer-python {path} not found (make .venv-bench/.installed-stamp){alternative}")
