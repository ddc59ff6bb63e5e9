"""The Dagster UI in a real browser: ``dagster dev`` on a copy of an instance, headless Chromium.

Used by tests/test_ui_browser.py and by ``make screenshot``, which runs this module on the current
profile's instance (``$DAGSTER_HOME``, copied first) and writes ``docs/img/asset-graph.png``:

    python -m tests.support.ui_browser docs/img/asset-graph.png
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml

from tests.support.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
# Playwright drives the Chromium that tests/support/browser.py finds (Debian's, one on PATH, or Playwright's
# own).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1600, "height": 1000}
TIMEOUT_MS = 60_000  # for each wait in the browser: two shared cores also run the webserver and daemon
# Large enough that the whole expanded graph (about 7700 x 7000 layout px) fits at a scale that still draws
# every asset node with its name.
GRAPH_VIEWPORT = {"width": 3840, "height": 3840}
ZOOM_OUT_STEPS = 2  # the 50-asset graph fits after one step at this viewport
# The UI asks once per browser profile to join the community (a modal over the page); answered.
DISMISS_NUX = "window.localStorage.setItem('communityNux', '\"1\"');"
# Asset nodes in the lineage graph, in both their minimal and full renderings.
ASSET_NODE = 'svg [class*="AssetNode_assetNodeContainer"]'
GROUP_NODE = "svg foreignObject.group"
LOADING_NODE = '[style*="--minimal-bg: var(--color-background-light)"]'


def copy_instance(dagster_home: Path, dest: Path) -> Path:
    """A copy of a Dagster instance directory whose daemon launches nothing: the sensors default to
    running under ``dagster dev``, so the run queue admits no run (requested runs stay queued)."""
    shutil.copytree(dagster_home, dest)
    config_path = dest / "dagster.yaml"
    config = (yaml.safe_load(config_path.read_text()) if config_path.exists() else None) or {}
    config["telemetry"] = {"enabled": False}
    config["run_queue"] = {**config.get("run_queue", {}), "max_concurrent_runs": 0}
    config_path.write_text(yaml.safe_dump(config))
    return dest


def ui_env(phi_home: Path, dagster_home: Path, profile: str) -> dict[str, str]:
    env = {
        **os.environ,
        "PHI_PROFILE": profile,
        "PHI_HOME": str(phi_home),
        "DAGSTER_HOME": str(dagster_home),
        "HF_HUB_OFFLINE": "1",
    }
    for var in ("PHI_ARTIFACT_ROOT", "PHI_LANDING_ROOT", "PHI_CATALOG"):
        env.pop(var, None)
    return env


def expected_graph(env: Mapping[str, str]) -> dict[str, list[str]]:
    """Group name -> asset keys, from the code location's ``Definitions`` loaded with ``env``."""
    code = (
        "import json; from phi_assets.definitions import defs; g = defs.resolve_asset_graph(); "
        "print(json.dumps([[g.get(k).group_name, k.to_user_string()] for k in g.get_all_asset_keys()]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=dict(env), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    groups: dict[str, list[str]] = {}
    for group, key in json.loads(done.stdout.strip().splitlines()[-1]):
        groups.setdefault(group, []).append(key)
    return {group: sorted(keys) for group, keys in sorted(groups.items())}


@contextmanager
def dagster_dev(env: Mapping[str, str], log_path: Path, timeout_s: float = 240) -> Iterator[str]:
    """``dagster dev -w workspace.yaml`` on a free loopback port; yields the UI's base URL once the
    webserver answers and the code location has loaded. The whole process group is stopped after."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_for_location(proc, url, log_path, timeout_s)
        yield url
    finally:
        _stop(proc)


def _log_tail(log_path: Path, chars: int = 4000) -> str:
    return log_path.read_text(errors="replace")[-chars:] if log_path.exists() else ""


LOCATION_QUERY = """{ workspaceOrError { __typename ... on Workspace { locationEntries { name
  loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


def _wait_for_location(proc: subprocess.Popen, url: str, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while True:
        assert proc.poll() is None, (
            f"dagster dev exited with {proc.returncode} before the UI came up; log tail:\n{_log_tail(log_path)}"
        )
        try:
            answer = httpx.post(f"{url}/graphql", json={"query": LOCATION_QUERY}, timeout=5).json()
            entries = answer["data"]["workspaceOrError"]["locationEntries"]
            last = json.dumps(entries)
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                errors = [e for e in entries if e["locationOrLoadError"]["__typename"] == "PythonError"]
                assert not errors, f"code location failed to load: {errors}\nlog tail:\n{_log_tail(log_path)}"
                return
        except (httpx.TransportError, KeyError, TypeError, ValueError) as exc:
            last = repr(exc)
        assert time.monotonic() < deadline, (
            f"dagster dev's UI at {url} did not load the code location in "
            f"{timeout_s:.0f} s (last: {last}); log tail:\n{_log_tail(log_path)}"
        )
        time.sleep(1)


def _stop(proc: subprocess.Popen, grace_s: float = 30) -> None:
    """Ctrl-C to the whole group (``dagster dev`` stops its webserver, daemon and code servers), then
    SIGKILL for whatever is left of the group after ``grace_s``."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace_s
    while True:
        proc.poll()  # reaps the leader, which otherwise stays in the group as a zombie
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    proc.wait()


@contextmanager
def chromium() -> Iterator:
    """Headless Chromium through Playwright: a fresh profile, no background networking."""
    from playwright.sync_api import sync_playwright

    from tests.support.browser import MISSING, find

    executable = find()
    assert executable, MISSING
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def browser_page(browser, viewport: Mapping[str, int] = VIEWPORT, timeout_ms: float = TIMEOUT_MS) -> Iterator:
    """A page in a fresh browser context (its own storage), closed after."""
    context = browser.new_context(viewport=dict(viewport))
    context.add_init_script(DISMISS_NUX)
    context.set_default_timeout(timeout_ms)
    try:
        yield context.new_page()
    finally:
        context.close()


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG file's header; fails on anything that is not a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def graph_groups(page, url: str) -> list[str]:
    """The group nodes the global lineage graph draws (collapsed, as it opens on a large graph)."""
    page.goto(f"{url}/asset-groups")
    nodes = page.locator(GROUP_NODE)
    nodes.first.wait_for()
    return group_names(page)


def group_names(page) -> list[str]:
    """The names on the group nodes the lineage graph draws (their first line of text)."""
    texts = page.locator(GROUP_NODE).evaluate_all("nodes => nodes.map(n => n.firstElementChild.innerText)")
    return sorted(text.strip().splitlines()[0] for text in texts if text.strip())


def expand_graph(page, url: str, num_assets: int) -> None:
    """The global lineage graph with every group expanded (the UI's Alt+E), navigation and sidebar
    hidden, zoomed to fit; waits until ``num_assets`` asset nodes are drawn."""
    from playwright.sync_api import expect

    page.goto(f"{url}/asset-groups")
    page.locator(GROUP_NODE).first.wait_for()
    page.get_by_role("button", name="Hide navigation").click()
    page.locator("button:has([aria-label='panel_show_right'])").click()  # the graph's sidebar
    page.keyboard.press("Alt+e")
    # The UI culls nodes outside the viewport: zoom out a step at a time (at most ZOOM_OUT_STEPS; one more
    # and it draws the nodes without their names) until every node is in view.
    for _ in range(ZOOM_OUT_STEPS):
        time.sleep(2)  # the expansion's layout, then each zoom, settles
        if page.locator(ASSET_NODE).count() >= num_assets:
            break
        page.locator("button:has([aria-label='zoom_out'])").click()
    nodes = expect(page.locator(ASSET_NODE), "asset nodes drawn in the expanded lineage graph")
    nodes.to_have_count(num_assets, timeout=TIMEOUT_MS)
    # Each node's live status (materialized, never materialized, queued...) replaces its grey "loading"
    # look once the UI's batched status queries answer. (Source assets keep that look; there are none.)
    expect(page.locator(LOADING_NODE), "asset nodes still loading their status").to_have_count(
        0, timeout=TIMEOUT_MS
    )


def screenshot(target, path: Path) -> Path:
    """``target`` (a page or a locator) as a PNG at ``path``, replacing any earlier file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    target.screenshot(path=path)
    return path


def screenshot_graph(page, path: Path) -> Path:
    """The lineage graph's viewport (not the page chrome) as a PNG."""
    return screenshot(page.locator("[data-svg-viewport]"), path)


COLLECT_ROWS = """() => Array.from(document.querySelectorAll('[class*="VirtualizedTable_row"]')).map(row => {
  const name = row.querySelector('a[href^="/assets/"]');
  const group = row.querySelector('a[href*="asset-groups"]');
  const key = name && decodeURIComponent(name.getAttribute('href').slice('/assets/'.length));
  return key ? [key, group ? group.textContent.trim() : null] : null;
}).filter(Boolean)"""
SCROLL_CONTAINER = """row => { let e = row.parentElement;
  while (e && !['auto', 'scroll'].includes(getComputedStyle(e).overflowY)) e = e.parentElement;
  return e; }"""
NEXT_FRAME = "() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))"


def catalog_assets(page, url: str) -> dict[str, str | None]:
    """Asset key -> group, as the asset catalog (``/assets``) lists them. The table is virtualized: it
    is scrolled through, collecting the rows drawn at each position, then back to the top."""
    page.goto(f"{url}/assets")
    first = page.locator('[class*="VirtualizedTable_row"]:has(a[href^="/assets/"])').first
    first.wait_for()
    scroller = first.evaluate_handle(SCROLL_CONTAINER)
    found: dict[str, str | None] = {}
    while True:
        found.update(dict(page.evaluate(COLLECT_ROWS)))
        if scroller.evaluate("e => !e || e.scrollTop + e.clientHeight >= e.scrollHeight - 1"):
            scroller.evaluate("e => e && e.scrollTo(0, 0)")
            return found
        scroller.evaluate("e => e.scrollBy(0, Math.max(64, e.clientHeight * 0.75))")
        page.evaluate(NEXT_FRAME)


IMAGE_INFO = """img => {
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  let ink = 0;
  if (img.naturalWidth) {
    const ctx = canvas.getContext('2d');
    ctx.drawImage(img, 0, 0);
    const px = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    for (let i = 0; i < px.length; i += 4) {
      if (px[i + 3] && Math.min(px[i], px[i + 1], px[i + 2]) < 200) ink++;
    }
  }
  const box = img.getBoundingClientRect();
  return {complete: img.complete, natural_width: img.naturalWidth, natural_height: img.naturalHeight,
          shown_width: box.width, shown_height: box.height, src: img.getAttribute('src').slice(0, 22),
          ink: img.naturalWidth ? ink / (img.naturalWidth * img.naturalHeight) : 0};
}"""


def open_markdown_plot(page, url: str, asset: str, key: str) -> dict:
    """Opens ``asset``'s page and its metadata entry ``key`` (markdown with an image), and measures the
    image drawn: natural and shown size and the share of non-white pixels (``ink``). A long value (a
    real plot) sits behind "[Show Markdown]" and opens in a dialog; a short one is drawn in the table."""
    page.goto(f"{url}/assets/{asset}")
    value = page.locator("tr").filter(has=page.get_by_text(key, exact=True)).locator("td").last
    value.wait_for()
    link = value.get_by_text("[Show Markdown]")
    if link.count():
        link.click()
        value = page.get_by_role("dialog").filter(has_text=key)
    image = value.locator("img").first
    image.wait_for()
    page.wait_for_function("img => img.complete", arg=image.element_handle())
    return image.evaluate(IMAGE_INFO)


@contextmanager
def ui_on(dagster_home: Path, phi_home: Path, profile: str, workdir: Path) -> Iterator[str]:
    """``dagster dev`` on a copy of ``dagster_home`` (under ``workdir``); yields the UI's URL."""
    instance = copy_instance(dagster_home, workdir / "dagster")
    with dagster_dev(ui_env(phi_home, instance, profile), workdir / "dagster-dev.log") as url:
        yield url


def main(argv: list[str]) -> int:
    """Writes the expanded asset graph of the current profile's instance to ``argv[0]``."""
    out = Path(argv[0] if argv else "docs/img/asset-graph.png").resolve()
    phi_home = Path(os.environ.get("PHI_HOME", ROOT / ".phi")).resolve()
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or phi_home / "dagster").resolve()
    profile = os.environ.get("PHI_PROFILE", "local")
    expected = expected_graph(ui_env(phi_home, dagster_home, profile))
    with tempfile.TemporaryDirectory(prefix="phi-ui-") as tmp:
        with ui_on(dagster_home, phi_home, profile, Path(tmp)) as url, chromium() as browser:
            with browser_page(browser, GRAPH_VIEWPORT) as page:
                expand_graph(page, url, sum(len(keys) for keys in expected.values()))
                screenshot_graph(page, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
