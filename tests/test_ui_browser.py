"""The Dagster UI in a real browser, on the demo's instance.

``dagster dev -w workspace.yaml`` serves a copy of the ``demo_run`` instance (ci profile) on loopback,
and headless Chromium (Debian's, driven by Playwright) opens it as a user would. The tests prove that:

- the global lineage graph draws every group of the code location's ``Definitions`` and, with the groups
  expanded, exactly one node per asset;
- the asset catalog lists every asset key of the ``Definitions``, each under its group, and nothing else;
- plots stored in asset metadata (markdown with an inline PNG, ``phi_assets/common/plots.py``) open from the
  asset's page and are drawn as decoded images with visible pixels, not as broken images or source text.

The expected groups and keys come from ``Definitions`` loaded with the same environment as the UI, so a
group or asset the UI fails to show fails here. Screenshots of each page go to ``$PHI_TEST_OUTPUT/ui``
(default ``test-output/ui``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from playwright.sync_api import expect

from tests.support.ui_browser import (
    GRAPH_VIEWPORT,
    ROOT,
    TIMEOUT_MS,
    browser_page,
    catalog_assets,
    chromium,
    expand_graph,
    expected_graph,
    graph_groups,
    group_names,
    open_markdown_plot,
    png_size,
    screenshot,
    screenshot_graph,
    ui_env,
    ui_on,
)

OUTPUT = Path(os.environ.get("PHI_TEST_OUTPUT") or ROOT / "test-output") / "ui"
# Assets whose metadata carries a plot, and the metadata key of one plot each.
PLOTS = [("pretrained_checkpoint", "loss_curve"), ("mixture_weights", "weights_plot")]


@pytest.fixture(scope="module")
def ui(demo_run, tmp_path_factory):
    """The UI's URL on a copy of the demo's instance, a browser, and the groups and keys to expect."""
    home = demo_run["home"]
    expected = expected_graph(ui_env(home, home / "dagster", "ci"))
    assert sum(map(len, expected.values())) > 20, expected
    with ui_on(home / "dagster", home, "ci", tmp_path_factory.mktemp("ui")) as url, chromium() as browser:
        yield SimpleNamespace(url=url, browser=browser, expected=expected)


def assert_screenshot(path: Path, min_width: int, min_height: int) -> None:
    width, height = png_size(path)
    assert width >= min_width and height >= min_height, f"{path}: {width}x{height}"
    assert path.stat().st_size > 20_000, f"{path}: {path.stat().st_size} bytes, nearly empty"


def test_lineage_graph_draws_every_group_and_asset(ui):
    with browser_page(ui.browser) as page:
        assert graph_groups(page, ui.url) == sorted(ui.expected), "groups drawn in the lineage graph"
    num_assets = sum(len(keys) for keys in ui.expected.values())
    with browser_page(ui.browser, GRAPH_VIEWPORT) as page:
        expand_graph(page, ui.url, num_assets)  # fails unless exactly num_assets asset nodes are drawn
        assert group_names(page) == sorted(ui.expected), "expanded groups"
        path = screenshot_graph(page, OUTPUT / "asset-graph.png")
    assert_screenshot(path, 1600, 800)


def test_catalog_lists_every_asset_in_its_group(ui):
    expected = {key: group for group, keys in ui.expected.items() for key in keys}
    with browser_page(ui.browser) as page:
        listed = catalog_assets(page, ui.url)
        # The rows' status column (materialized, partitions...) fills in once its queries answer.
        expect(page.get_by_text(re.compile(r"^Loading"))).to_have_count(0, timeout=TIMEOUT_MS)
        path = screenshot(page, OUTPUT / "catalog.png")
    missing, extra = sorted(expected.keys() - listed.keys()), sorted(listed.keys() - expected.keys())
    assert not missing, f"assets of the Definitions missing from the catalog: {missing}"
    assert not extra, f"assets in the catalog that the Definitions do not have: {extra}"
    assert listed == expected, "asset -> group in the catalog"
    assert_screenshot(path, 1600, 1000)


@pytest.mark.parametrize(("asset", "key"), PLOTS)
def test_metadata_plot_is_drawn(ui, asset, key):
    with browser_page(ui.browser) as page:
        image = open_markdown_plot(page, ui.url, asset, key)
        path = screenshot(page, OUTPUT / f"{asset}-{key}.png")
    assert image["src"].startswith("data:image/png;base64"), image
    assert image["complete"] and image["natural_width"] >= 200 and image["natural_height"] >= 100, image
    assert image["shown_width"] >= 200 and image["shown_height"] >= 100, image
    # Axes, ticks, labels and the data drawn in dark colours on white: a decoded image of a real plot.
    assert 0.01 < image["ink"] < 0.8, image
    assert_screenshot(path, 1600, 1000)
