"""Every link in the README and the docs resolves: a linked file exists in the repository, and a
``#fragment`` names a heading of the page it points to (GitHub's anchors). Web links are not fetched."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *ROOT.glob("*/README.md")])
# [text](target) and ![alt](target), not inside inline code; the target ends at whitespace or ")".
LINK = re.compile(r"!?\[[^\]`]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def prose(text: str, inline_code: bool = False) -> str:
    """The page without fenced code blocks (and inline code, unless asked), where brackets are not links."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        lines.append("" if fenced else line if inline_code else re.sub(r"`[^`]*`", "", line))
    return "\n".join(lines)


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose(page.read_text(encoding="utf-8"), inline_code=True).splitlines():
        match = HEADING.match(line)
        if not match:
            continue
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(1))  # a linked heading keeps its text
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def links(page: Path) -> list[str]:
    return LINK.findall(prose(page.read_text(encoding="utf-8")))


def broken(page: Path, root: Path = ROOT) -> list[str]:
    found = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...: not checked here
            continue
        path_part, _, fragment = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.exists():
            found.append(f"{target}: no such file")
        elif root not in linked.parents and linked != root:
            found.append(f"{target}: outside the repository")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            found.append(f"{target}: no heading #{fragment} in {linked.relative_to(root)}")
    return found


def test_the_pages_have_links_to_check():
    assert ROOT / "README.md" in PAGES and len(PAGES) > 5
    assert sum(len(links(page)) for page in PAGES) > 20


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_link_resolves(page: Path):
    assert broken(page) == []


def test_a_broken_link_and_a_missing_heading_are_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other page\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text("# Title\n\n## Two words, and `code`\n\n[ok](#two-words-and-code) "
                    "[ok](other.md#other-page) [gone](nowhere.md) [bad](#three) [up](../../x.md)\n"
                    "`[code](nowhere.md)`\n```\n[fenced](nowhere.md)\n```\n")
    assert broken(page, root=tmp_path) == [
        "nowhere.md: no such file", "#three: no heading #three in docs/page.md", "../../x.md: no such file"]
