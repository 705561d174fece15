"""Every relative link of the README and docs/ leads somewhere: the file exists, and a #fragment
names a heading of the page it points to (GitHub's anchors: lower case, punctuation dropped, spaces
to hyphens). A section renamed without its links would otherwise leave readers at the top of a page."""

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target)


def anchor(heading: str) -> str:
    """GitHub's id of a heading: its text in lower case, without punctuation, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # no headings in code blocks
    return {anchor(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def test_anchor_follows_github():
    assert anchor("The 2-D front and the constrained mode, with 5 seeds") == \
        "the-2-d-front-and-the-constrained-mode-with-5-seeds"
    assert anchor("Why the reproduction anneals the learning rate") == \
        "why-the-reproduction-anneals-the-learning-rate"
    assert anchor("Which alpha?") == "which-alpha"
    assert anchor("`make reproduce`: the results") == "make-reproduce-the-results"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_lead_to_files_and_headings(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file):
            broken.append(f"{target}: no heading #{fragment} in {file.name}")
    assert not broken, broken
