"""The Chromium that the UI tests and ``make screenshot`` drive, and how ``make test`` gets one.

``python -m tests.support.browser`` prints the executable's path, installing a browser first when none is
found:

1. ``PHI_CHROMIUM``, when set (it must name an executable);
2. a Chromium or Chrome on ``PATH`` (Debian's ``chromium`` is ``/usr/bin/chromium``);
3. Playwright's own Chromium, when ``playwright install chromium`` has put it in its cache;
4. otherwise it installs one: as root with apt-get, Debian's ``chromium`` package; without root,
   Playwright's browser download (which needs its download host to be reachable);
5. and when nothing works, it stops with one line that says exactly what to install.

Nothing is skipped silently: the UI tests fail when the browser is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence

ENV = "PHI_CHROMIUM"
NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
APT_PACKAGES = ("chromium", "chromium-driver")
#: What ``make test`` says when it can neither find nor install a browser.
MISSING = (
    "make test needs Chromium for the UI tests and none was found or could be installed: install Debian's "
    "chromium (sudo apt-get install chromium), or run `.venv/bin/playwright install chromium` where its "
    f"download is reachable, or set {ENV} to a Chromium or Chrome executable"
)


class BrowserMissing(RuntimeError):
    """No Chromium, and none could be installed."""


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def playwright_chromium() -> str | None:
    """Playwright's own Chromium, where ``playwright install chromium`` put it; None when it is absent."""
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            path = pw.chromium.executable_path
    except Exception:  # no driver, or it cannot start: then there is no Playwright browser either
        return None
    return path if path and _executable(path) else None


def find() -> str | None:
    """The browser to drive, in the module's order; None when there is none."""
    configured = os.environ.get(ENV)
    if configured:
        if not _executable(configured):
            raise BrowserMissing(f"{ENV}={configured} is not an executable file")
        return configured
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    return playwright_chromium()


def install_debian() -> str:
    """Debian's chromium through apt-get (root only). Returns what went wrong, or "" when it went through."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", *APT_PACKAGES]):
        done = subprocess.run(cmd, env=env, stdout=sys.stderr, stderr=sys.stderr, check=False)
        if done.returncode != 0:
            return f"`{' '.join(cmd)}` exited {done.returncode}"
    return ""


def install_playwright() -> str:
    """Playwright's browser download into its per-user cache. Returns what went wrong, or ""."""
    done = subprocess.run([sys.executable, "-m", "playwright", "install", "chromium"],
                          capture_output=True, text=True, check=False)
    if done.returncode == 0:
        return ""
    lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
    return f"`playwright install chromium` failed ({lines[0] if lines else f'exit {done.returncode}'})"


def installers() -> list[Callable[[], str]]:
    """What this user can install with: apt-get as root, else Playwright's download."""
    as_root = os.geteuid() == 0 and shutil.which("apt-get") is not None
    return [install_debian, install_playwright] if as_root else [install_playwright]


def ensure(install_with: Sequence[Callable[[], str]]) -> str:
    """The browser's path, after installing one with the first installer that works if none is found."""
    found = find()
    if found:
        return found
    failures = []
    for install in install_with:
        failure = install()
        found = None if failure else find()
        if found:
            return found
        failures.append(failure or f"{install.__name__} installed no browser that could be found")
    raise BrowserMissing(MISSING + (f" ({'; '.join(failures)})" if failures else ""))


def main() -> None:
    try:
        print(ensure(installers()))
    except BrowserMissing as exc:
        raise SystemExit(str(exc)) from None


if __name__ == "__main__":
    main()
