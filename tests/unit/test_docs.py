"""README.md is a front page and docs/ its reference, checked from the files:

* README.md is at most 200 lines;
* README links every ``docs/*.md`` page, and every page it links exists;
* every relative link of README and the docs pages reaches a file, and each ``#anchor`` a
  heading of that page (GitHub's heading ids);
* README's test command is the one CI runs (``.ci/run``), and README's two commands call
  scripts that exist.

The tables kept equal to the code are checked where the code is: the output columns in
``test_schema.py`` (docs/results.md), the run-config keys in ``test_config.py``
(docs/run-config.md).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 200

# [text](target) and ![alt](target); the target up to the first space or closing paren.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _links(page: Path) -> list[str]:
    """The link targets of ``page`` outside fenced code blocks."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return LINK.findall(text)


def _anchor(heading: str) -> str:
    """GitHub's id of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_anchor(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def _fenced_after(text: str, lead: str) -> str:
    """The one-line content of the first fenced block after the line starting with ``lead``."""
    rest = text[text.index("\n" + lead):]
    block = re.search(r"```\w*\n(.*?)\n```", rest, flags=re.S)
    assert block is not None, f"no code block after {lead!r}"
    return block.group(1).strip()


def test_readme_is_a_front_page():
    lines = README.read_text().count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES})"


def test_readme_links_every_docs_page_and_only_pages_that_exist():
    linked = {(ROOT / t.split("#", 1)[0]).resolve() for t in _links(README)
              if t.startswith("docs/") and t.split("#", 1)[0].endswith(".md")}
    pages = {p.resolve() for p in DOCS.glob("*.md")}
    assert pages, "docs/ holds no pages"
    assert sorted(p.name for p in pages - linked) == [], "docs pages README does not link"
    assert sorted(str(p) for p in linked - pages) == [], "README links pages that do not exist"


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_reach_a_file_and_a_heading(page: Path):
    for target in _links(page):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.is_file(), f"{page.name}: {target} does not exist"
        if anchor:
            assert anchor in _anchors(dest), f"{page.name}: {target}: no such heading"


def test_readme_test_command_is_what_ci_runs():
    readme = _fenced_after(README.read_text(), "Set up and run the tests")
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    assert ci[-1] == readme


def test_readme_commands_call_scripts_that_exist():
    text = README.read_text()
    for lead in ("Set up and run the main job", "Set up and run the tests"):
        command = _fenced_after(text, lead)
        for script in re.findall(r"(?:bash )?((?:scripts|\.venv/bin)/[\w.-]+)", command):
            if script.startswith(".venv/"):  # built by scripts/setup.sh
                continue
            assert (ROOT / script).is_file(), f"{lead}: {script} does not exist"
