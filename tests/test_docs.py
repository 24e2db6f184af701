"""The documentation: a README of at most 300 lines whose relative links all land (on a file, and on a heading of
it where they name one), a docs site that MkDocs builds in strict mode without a warning, and product docs that
state how things are now (no issue numbers, no story of how a figure changed: that is CHANGELOG.md's and the dated
results' part of docs/benchmarks.md)."""

from __future__ import annotations

import re
import subprocess
import sys
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CHANGELOG = ROOT / "CHANGELOG.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 300
# What product docs never say: history belongs in CHANGELOG.md and the dated results of docs/benchmarks.md.
HISTORY = re.compile(r"\bissue [0-9]+|after issue|this session", re.IGNORECASE)
DATED_RESULTS = "## Dated results"

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def prose(markdown: str) -> str:
    """The text outside fenced code blocks, where links and headings live."""
    return FENCE.sub("", markdown)


def slug(heading: str) -> str:
    """A heading's anchor as GitHub and MkDocs' toc extension both make it for the headings used here."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = unicodedata.normalize("NFKD", text).lower()
    text = re.sub(r"[^\w\s-]", "", text)
    return re.sub(r"[\s]+", "-", text.strip())


def anchors(path: Path) -> set[str]:
    return {slug(h) for h in HEADING.findall(prose(path.read_text()))}


def relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(prose(path.read_text())) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def test_the_readme_is_at_most_300_lines() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; the rest belongs in docs/"


@pytest.mark.parametrize("page", [README, CHANGELOG], ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    """README.md and CHANGELOG.md sit outside docs/, so MkDocs does not check them; GitHub shows their links."""
    broken = []
    links = relative_links(page)
    assert any(link.startswith("docs/") for link in links), f"{page.name} links into docs/"
    for link in links:
        target, _, anchor = link.partition("#")
        path = (page.parent / unquote(target)).resolve() if target else page
        if not path.exists():
            broken.append(f"{link}: no file {target}")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{link}: no heading #{anchor} in {target}")
    assert not broken, f"broken links in {page.name}:\n" + "\n".join(broken)


def test_the_docs_site_builds_strictly_without_a_warning(tmp_path: Path) -> None:
    mkdocs = Path(sys.executable).parent / "mkdocs"
    done = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "WARNING" not in output, output
    assert (tmp_path / "site" / "index.html").exists()


def product_docs() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


@pytest.mark.parametrize("path", product_docs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_product_docs_tell_how_it_is_not_its_history(path: Path) -> None:
    text = path.read_text()
    if path == DOCS / "benchmarks.md":
        assert DATED_RESULTS in text, "docs/benchmarks.md keeps its dated runs under a heading of their own"
        text = text.split(DATED_RESULTS, 1)[0]
    found = [m.group(0) for m in HISTORY.finditer(text)]
    assert not found, f"{path.relative_to(ROOT)} tells history ({found}); it belongs in CHANGELOG.md"
