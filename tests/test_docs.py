"""The documentation site builds offline with ``--strict`` (a broken link, anchor or API reference
fails the build), its CLI reference is generated from the parsers, and no page points outside the
repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MKDOCS = shutil.which("mkdocs", path=str(Path(sys.executable).parent))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if MKDOCS is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([MKDOCS, "build", "--strict", "--site-dir", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def test_site_builds_strict_with_every_page(site):
    import yaml  # mkdocs' own dependency

    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text().split("validation:")[0])["nav"]
    pages = [next(iter(item.values())) for item in nav]
    for page in pages:
        assert (site / page.replace(".md", ".html")).exists() or page == "index.md", page
    listed = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert listed == set(pages), f"pages missing from the nav: {listed - set(pages)}"


def test_cli_reference_lists_every_subcommand_and_recipe(site):
    from pellucid.cli.main import SUBCOMMANDS
    from pellucid.train import RECIPES

    html = (site / "cli.html").read_text()
    for name in SUBCOMMANDS:
        assert f"pellucid {name}" in html, name
    for recipe in RECIPES:
        assert f"pellucid train {recipe}" in html, recipe
    assert "--batch-size" in html and "--attack" in html  # options, not only names


def test_api_reference_renders_the_public_classes(site):
    html = (site / "api.html").read_text()
    for name in ("TwoStep", "EpsilonSoftmax", "SoftMaxPool", "ExcitationPullback", "evaluate_robustness",
                 "WhiteBoxNet"):
        assert name in html, name


def test_no_page_refers_to_a_path_outside_the_repository():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text()
        assert not re.search(r"\.\./shared|shared/(reference|seeds|fixtures)", text), page
        assert not re.search(r"session|this machine|earlier machines", text, re.I), page
