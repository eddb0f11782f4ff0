"""How the report writes numbers, and what it records of where it was written (no browser)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pellucid.report.html import (Figure, Section, Stat, duration, format_value, git_commit, png_size,
                                  run_facts, write_report)

NBSP = "\u00a0"


@pytest.mark.parametrize("key, value, text", [
    ("clean_accuracy", 0.99316, f"99.32{NBSP}%"),
    ("precision_at_recall_0.8", 1.0, f"100.00{NBSP}%"),
    ("precision_at_recall_0.8_ci95", [0.9729, 0.9875], f"97.29{NBSP}% – 98.75{NBSP}%"),
    ("seconds", 476.0, f"7{NBSP}min 56{NBSP}s"),
    ("epoch_seconds", 4.64, f"4.6{NBSP}s"),
    ("train_seconds", 0.169, f"169{NBSP}ms"),
    ("n", 10552, "10,552"),
    ("seed", 2**40, str(2**40)),  # an identifier: no separators
    ("eps", 0.3, "0.3"),
    ("train_loss", 0.0207, "0.0207"),
    ("robust_accuracy", None, "–"),
    ("robust_accuracy", float("nan"), "–"),
    ("monotone_rise", -0.002, "-0.002"),  # not a rate word: as written
    ("white_box", True, "yes"),
])
def test_values_are_written_by_what_they_are(key, value, text):
    assert format_value(key, value) == text


def test_durations_read_like_a_clock():
    assert [duration(s) for s in (0.42, 9.96, 59.6, 96, 7500)] == [
        f"420{NBSP}ms", f"10{NBSP}s", f"1{NBSP}min 0{NBSP}s", f"1{NBSP}min 36{NBSP}s", f"2{NBSP}h 05{NBSP}min"]


def test_git_commit_is_none_outside_a_checkout_and_never_raises(tmp_path, monkeypatch):
    assert git_commit(tmp_path) is None
    assert git_commit(tmp_path / "site-packages" / "pellucid") is None
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    assert git_commit() is None
    facts = run_facts()
    assert facts["git commit"] is None and facts["written (UTC)"].endswith("+00:00")


def test_git_commit_of_a_checkout(tmp_path):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    try:
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, capture_output=True, timeout=20)
        (tmp_path / "f").write_text("1")
        subprocess.run([*git, "add", "f"], cwd=tmp_path, check=True, capture_output=True, timeout=20)
        subprocess.run([*git, "commit", "-q", "-m", "m"], cwd=tmp_path, check=True, capture_output=True,
                       timeout=20)
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, check=True, capture_output=True,
                              text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pytest.skip("no working git to make a checkout with")
    assert git_commit(tmp_path) == head
    (tmp_path / "f").write_text("2")
    assert git_commit(tmp_path) == f"{head} (uncommitted changes)"


def test_a_report_is_one_file_with_headline_provenance_and_zoomable_figures(tmp_path, monkeypatch):
    from pellucid.viz.curves import plot_accuracy_vs_eps

    png = plot_accuracy_vs_eps([{"eps": 0.0, "robust_accuracy": 1.0}, {"eps": 0.1, "robust_accuracy": 0.5}],
                               tmp_path / "a.png", None)
    assert png_size(png)[0] > 0
    monkeypatch.setattr(sys, "argv", ["pellucid", "evaluate", "runs/x", "--report"])
    out = write_report(tmp_path / "report.html", "pellucid: t", [
        Section("Curves", "", [Figure(png, "first", n=16), (png, "second: a (png, caption) pair")],
                table=[{"seconds": 476.0, "robust_accuracy": 0.5}])],
        {"device": "cpu", "config": {"model": "m"}}, headline=[Stat("robust accuracy", "50.00 %", "n")], n=16)
    html = out.read_text()
    assert html.count("<img") == 2 and "src=\"http" not in html and "<script" not in html
    assert html.count("class='zoom'") == 2 and "n = 16" not in html  # same n as the headline's
    assert f"7{NBSP}min 56{NBSP}s" in html and "476.0000" not in html and f"50.00{NBSP}%" in html
    assert "pellucid evaluate runs/x --report" in html and "written (UTC)" in html
    assert "<summary>config" in html and "&quot;model&quot;: &quot;m&quot;" in html


def test_every_report_has_a_gradient_masking_section(tmp_path):
    from pellucid.report.robustness import robustness_sections

    sections = robustness_sections(tmp_path, [])
    assert [s.title for s in sections] == ["Robustness", "Gradient-masking checks"]
    assert "None recorded" in sections[1].text
