"""The README and docs/ stay true and findable: every measured table is what bench/results says, the
README stays a first screen, every page is on its map, and every link between pages leads somewhere."""

import re
import sys
import tomllib

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))
from bench import tables  # noqa: E402

DOCS = sorted((REPO_ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def test_every_measured_table_is_what_the_results_files_say():
    assert tables.stale_pages() == [], "run python bench/tables.py"


def test_every_marked_table_has_a_renderer_and_every_renderer_a_table():
    marked = {match.group("name") for page in tables.PAGES for match in tables.MARKED.finditer(page.read_text())}
    assert marked == set(tables.RENDERERS)


def test_the_readme_is_a_first_screen_and_a_map_of_every_page():
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 10 * 1024, f"README.md is {len(readme.encode())} bytes: move a concern to docs/"
    linked = {target.split("#")[0] for target in LINK.findall(readme)}
    assert {f"docs/{page.name}" for page in DOCS} <= linked, "a page under docs/ that the README's map does not name"


def test_every_link_between_the_pages_leads_to_a_file_and_heading_that_exist():
    broken = []
    for page in [REPO_ROOT / "README.md", *DOCS]:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name} -> {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{page.name} -> {target} (no such heading)")
    assert broken == []


def test_the_licence_file_is_the_one_pyproject_names():
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["license"]["text"]
    text = (REPO_ROOT / "LICENSE").read_text()
    assert declared == "Apache-2.0" and "Apache License" in text and "Version 2.0, January 2004" in text
