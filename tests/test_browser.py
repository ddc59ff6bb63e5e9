"""How ``make test`` gets the Chromium of the UI tests (tests/support/browser.py), as root or not.

Each case runs ``python -m tests.support.browser``, the Makefile's own command, in a child process with a
PATH and HOME of the test's making. The non-root cases run it in a user namespace (``unshare -U``: the
process's effective uid is then 65534, as for any unprivileged user), and point Playwright's download
at a closed loopback port, so that whether a machine can reach Playwright's download host does not
change the outcome.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.browser import ENV, MISSING

ROOT = Path(__file__).resolve().parents[1]
CLOSED_PORT = "http://127.0.0.1:9"  # the discard port: nothing listens there


def fake_browser(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def run_finder(tmp_path: Path, *, as_user: bool, path_dirs: list[Path], **env: str):
    base = {"PATH": os.pathsep.join(map(str, path_dirs)), "HOME": str(tmp_path / "home"),
            "PLAYWRIGHT_BROWSERS_PATH": str(tmp_path / "ms-playwright"),
            "PLAYWRIGHT_DOWNLOAD_HOST": CLOSED_PORT}
    cmd = [sys.executable, "-m", "tests.support.browser"]
    if as_user:
        cmd = [shutil.which("unshare") or "unshare", "--user", *cmd]  # on the test's PATH
    return subprocess.run(cmd, cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=120)


def test_without_root_or_a_browser_it_stops_with_one_line_saying_what_to_install(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    done = run_finder(tmp_path, as_user=True, path_dirs=[empty])
    assert done.returncode != 0 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(MISSING)
    for what in ("apt-get install chromium", "playwright install chromium", ENV):
        assert what in lines[0]
    assert "playwright install chromium` failed" in lines[0]  # it tried the download it could try, as a user


def test_a_chromium_on_path_is_used_without_installing_anything(tmp_path):
    browser = fake_browser(tmp_path / "bin" / "chromium")
    done = run_finder(tmp_path, as_user=True, path_dirs=[browser.parent])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(browser)
    assert not (tmp_path / "ms-playwright").exists()  # no download was attempted


def test_playwrights_own_browser_is_found_in_its_cache(tmp_path, monkeypatch):
    from playwright.sync_api import sync_playwright

    cache = tmp_path / "ms-playwright"
    monkeypatch.setenv("PLAYWRIGHT_BROWSERS_PATH", str(cache))
    with sync_playwright() as pw:  # where Playwright itself would install and look for its Chromium
        expected = Path(pw.chromium.executable_path)
    assert cache in expected.parents
    fake_browser(expected)
    empty = tmp_path / "bin"
    empty.mkdir()
    done = run_finder(tmp_path, as_user=True, path_dirs=[empty])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(expected)


@pytest.mark.parametrize("given", ["missing", "not-executable"])
def test_a_configured_browser_that_cannot_run_is_named_in_the_error(tmp_path, given):
    target = tmp_path / "chrome"
    if given == "not-executable":
        target.write_text("")
    other = fake_browser(tmp_path / "bin" / "chromium")  # ignored: the configured one is what was asked for
    done = run_finder(tmp_path, as_user=False, path_dirs=[other.parent], **{ENV: str(target)})
    assert done.returncode != 0
    assert done.stderr.strip() == f"{ENV}={target} is not an executable file"
