"""The sandbox tests' leftover check (``checking_leftovers``): a process left behind fails the test, whether
it is the test's child or an orphan; a process another pytest worker runs at the same time does not."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.support.sandbox import checking_leftovers

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sandbox_dir(tmp_path: Path) -> Path:
    """A working directory named as the sandbox names its own: its processes count as sandboxed."""
    path = tmp_path / "phi-sandbox-test"
    path.mkdir()
    return path


def test_a_child_left_behind_fails(sandbox_dir: Path):
    with pytest.raises(AssertionError, match="sandboxed processes left behind"):
        with checking_leftovers():
            proc = subprocess.Popen(["sleep", "30"], cwd=sandbox_dir)
    proc.kill()
    proc.wait()


def test_an_orphan_left_behind_fails(sandbox_dir: Path):
    with pytest.raises(AssertionError, match="sandboxed processes left behind"):
        with checking_leftovers():
            out = subprocess.run(["sh", "-c", "sleep 30 > /dev/null 2>&1 & echo $!"], cwd=sandbox_dir,
                                 capture_output=True, text=True, check=True)
    subprocess.run(["kill", out.stdout.strip()], check=False)


def test_a_sibling_workers_program_is_not_a_leftover(tmp_path: Path, sandbox_dir: Path):
    """A child process plays a pytest worker checking for leftovers; this process, its parent, plays the
    run that started it and starts a sandboxed process in the meantime (as another worker would)."""
    ready, go = tmp_path / "ready", tmp_path / "go"
    code = textwrap.dedent("""
        import pathlib, sys, time
        from tests.support.sandbox import checking_leftovers
        with checking_leftovers():
            pathlib.Path(sys.argv[1]).write_text("ready")
            while not pathlib.Path(sys.argv[2]).exists():
                time.sleep(0.05)
        print("clean")
    """)
    worker = subprocess.Popen([sys.executable, "-c", code, str(ready), str(go)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline and worker.poll() is None:
        time.sleep(0.05)
    sibling = subprocess.Popen(["sleep", "30"], cwd=sandbox_dir)
    try:
        go.write_text("go")
        out, err = worker.communicate(timeout=60)
    finally:
        sibling.kill()
        sibling.wait()
    assert worker.returncode == 0 and out.strip() == "clean", err[-2000:]
