"""The docs a newcomer meets: a README short enough to read, opening with the two set-up
commands; links from it that resolve; and a site (mkdocs.yml) whose navigation lists every
page under docs/, so `make docs` (strict) fails on anything left out."""

from __future__ import annotations

import re
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MKDOCS = ROOT / "mkdocs.yml"
README_MAX_LINES = 200

FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.M | re.S)
SHELL = {"sh", "bash", "shell", "console"}
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
EXTERNAL = ("http://", "https://", "mailto:")


def shell_blocks(text: str) -> list[str]:
    """The fenced blocks marked as shell (a diagram is a `text` block, not commands)."""
    return [body for language, body in FENCE.findall(text) if language.strip() in SHELL]


def commands(block: str) -> list[str]:
    """The commands of a shell block, without comments or blank lines."""
    lines = (line.split("#", 1)[0].strip() for line in block.splitlines())
    return [line for line in lines if line]


def slug(heading: str) -> str:
    """The anchor MkDocs gives a heading (Python-Markdown's default toc slugify), after
    dropping the inline markup it does not render into the text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").replace("*", "")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a Markdown page (headings inside code blocks are not ones)."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slug(h) for h in HEADING.findall(text)}


def nav_pages(entry: Any) -> list[str]:
    """Every page named in a mkdocs `nav` (nested sections included)."""
    if isinstance(entry, str):
        return [entry]
    if isinstance(entry, list):
        return [page for item in entry for page in nav_pages(item)]
    if isinstance(entry, dict):
        return [page for value in entry.values() for page in nav_pages(value)]
    return []


def mkdocs_config() -> dict[str, Any]:
    return yaml.safe_load(MKDOCS.read_text(encoding="utf-8"))


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


def test_readme_opens_with_make_up_and_make_test_and_names_make_unit() -> None:
    text = README.read_text(encoding="utf-8")
    blocks = [commands(block) for block in shell_blocks(text)]
    first = next(block for block in blocks if block)
    assert first[:2] == ["make up", "make test"], first
    assert "make unit" in text


def test_readme_links_point_at_existing_files_and_anchors() -> None:
    text = FENCE.sub("", README.read_text(encoding="utf-8"))
    links = [link for link in LINK.findall(text) if not link.startswith(EXTERNAL)]
    assert links, "README.md links nowhere"
    for link in links:
        path, _, anchor = link.partition("#")
        target = ROOT / path if path else README
        assert target.exists(), f"README.md links to {link}, which does not exist"
        if anchor:
            assert anchor in anchors(target), f"README.md links to {link}: no such heading"


def test_every_docs_page_is_in_the_nav_and_every_nav_page_exists() -> None:
    config = mkdocs_config()
    listed = nav_pages(config["nav"])
    assert len(listed) == len(set(listed)), "a page is listed twice in mkdocs.yml's nav"
    pages = {path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md")}
    assert pages - set(listed) == set(), "docs pages missing from mkdocs.yml's nav"
    assert set(listed) - pages == set(), "mkdocs.yml's nav names pages that do not exist"


def test_site_build_is_strict_about_links_anchors_and_unlisted_pages() -> None:
    config = mkdocs_config()
    assert config["docs_dir"] == "docs"
    assert config["theme"]["name"] == "material"
    assert config["strict"] is True
    validation = config["validation"]
    assert validation["nav"]["omitted_files"] == "warn"
    for check in ("anchors", "unrecognized_links", "absolute_links"):
        assert validation["links"][check] == "warn", check


def test_site_builds_strict_without_a_warning(tmp_path: Path) -> None:
    """The build itself, not quieted: `mkdocs build --strict --quiet` exits 0 even when it
    warns (--quiet drops the warnings strict mode counts), so a broken link or anchor or an
    unlisted page would pass it."""
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1"},
    )
    warnings = [line for line in build.stderr.splitlines() if line.startswith("WARNING")]
    assert build.returncode == 0 and not warnings, build.stderr


def test_slug_matches_the_anchors_the_docs_use() -> None:
    assert slug("The client's half: retry with the same ids") == (
        "the-clients-half-retry-with-the-same-ids"
    )
    assert slug("Streaming: `/input/stream`") == "streaming-inputstream"
    assert slug("Overload: Serve's admission limits") == "overload-serves-admission-limits"
