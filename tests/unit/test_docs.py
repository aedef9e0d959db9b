"""The README stays a short front door, and every link in it and in docs/ works from a clone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
_CODE = re.compile(r"`[^`\n]*`")
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_INLINE = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFDEF = re.compile(r"^\s{0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.M)


def _prose(text: str) -> str:
    """The text a reader follows links in: no code blocks, code spans or comments."""
    return _CODE.sub("", _FENCE.sub("", _COMMENT.sub("", text)))


def links(page: Path) -> list[str]:
    text = _prose(page.read_text())
    return _INLINE.findall(text) + _REFDEF.findall(text)


def relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) and not target.startswith("//")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _FENCE.sub("", page.read_text()).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_readme_is_a_five_minute_read() -> None:
    n = len(README.read_text().splitlines())
    assert n <= 200, f"README.md has {n} lines; move detail to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_link_outside_the_repository(page: Path) -> None:
    assert "../shared" not in page.read_text(), f"{page.name} points at ../shared, which a clone does not have"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        if not relative(target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page.resolve()
        if not dest.is_relative_to(ROOT) or not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(target)
    assert not broken, f"{page.name}: links that do not resolve in a clone: {broken}"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(README) if relative(t)}
    missing = [p.name for p in DOCS if p.resolve() not in linked]
    assert not missing, f"docs/ pages not in the README's index: {missing}"


def test_the_link_finder_sees_links_and_skips_code(tmp_path: Path) -> None:
    page = tmp_path / "x.md"
    page.write_text(
        "See [a](docs/a.md#part) and ![img](b.png).\n"
        "`[not](code.md)`\n"
        "```\n[nor](fenced.md)\n```\n"
        "[ref]: docs/c.md\n"
        "<!-- [hidden](h.md) -->\n"
        "[web](https://example.org/x)\n"
    )
    found = links(page)
    assert found == ["docs/a.md#part", "b.png", "https://example.org/x", "docs/c.md"]
    assert [t for t in found if relative(t)] == ["docs/a.md#part", "b.png", "docs/c.md"]
    assert slug("Latest full sweep (2026-11-29)") == "latest-full-sweep-2026-11-29"
    assert slug("Faults, overload and reload") == "faults-overload-and-reload"
