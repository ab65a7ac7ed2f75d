"""The README and docs/ point at things that exist: relative links resolve, every `python -m`
names a module, every page says who it is for, and the front page stays a front page."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

import pytest

from tests.helpers import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
MODULE = re.compile(r"python3? -m ([A-Za-z_][\w.]*)")


def _page_id(page: Path) -> str:
    return str(page.relative_to(REPO))


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address or an anchor on the same page
        if not (page.parent / target.split("#")[0]).exists():
            broken.append(target)
    assert not broken, f"{_page_id(page)} links to missing files {broken}"


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_python_m_names_a_module_that_exists(page):
    missing = sorted({m for m in MODULE.findall(page.read_text())
                      if not (REPO / (m.replace(".", "/") + ".py")).is_file()
                      and importlib.util.find_spec(m.split(".")[0]) is None})
    assert not missing, f"{_page_id(page)} names modules that do not exist: {missing}"


def test_the_readme_is_a_front_page_that_links_every_docs_page():
    readme = PAGES[0].read_text()
    assert len(readme.splitlines()) <= 250
    unlinked = [p.name for p in PAGES[1:] if f"docs/{p.name}" not in readme]
    assert not unlinked, f"README links none of {unlinked}"


@pytest.mark.parametrize("page", PAGES[1:], ids=_page_id)
def test_docs_pages_open_with_who_they_are_for(page):
    lines = [line for line in page.read_text().splitlines() if line.strip()]
    assert lines[0].startswith("# ") and lines[1].startswith("For: "), _page_id(page)


def test_installed_commands_point_at_command_functions():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"ecg-predict", "ecg-cross-evaluate"} <= set(scripts)
    for target in scripts.values():
        module, function = target.split(":")
        assert (REPO / (module.replace(".", "/") + ".py")).is_file(), target
        assert re.search(rf"^def {function}\(\) -> None:", (REPO / (module.replace(".", "/")
                                                            + ".py")).read_text(), re.M), target
