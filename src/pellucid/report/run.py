"""The run report: one self-contained HTML file per model directory."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from pellucid.data.datasets import ImageDataset
from pellucid.models.whitebox import WhiteBoxNet
from pellucid.report.html import Section, write_report
from pellucid.report.records import load_records
from pellucid.report.robustness import robustness_sections
from pellucid.report.whitebox import whitebox_sections
from pellucid.robust.evaluate import RobustnessResult
from pellucid.viz import curves


def run_report(run_dir: Path | str, model: nn.Module, test: ImageDataset,
               result: RobustnessResult | None = None) -> Path:
    """Write ``run_dir/report.html``: learning curve, every recorded evaluation (tables, checks,
    reliability per attack, accuracy vs eps, minimal perturbations) and, for the white-box
    network, its layers and "how the model sees" ``result``'s adversarial inputs."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    history = [json.loads(line) for line in metrics.read_text().splitlines()
               if line.strip()] if metrics.is_file() else []
    sections = robustness_sections(run_dir, load_records(run_dir))
    if history:
        png = curves.plot_learning_curve(history, run_dir / "learning_curve.png")
        sections.append(Section("Learning curve", "", [(png, "Learning curve")]))
    if isinstance(model, WhiteBoxNet):
        sections += whitebox_sections(run_dir, model, test, result)
    if history:
        sections.append(Section("Training log", table=history))
    config_path = run_dir / "config.json"
    provenance = {"config": json.loads(config_path.read_text())} if config_path.is_file() else {}
    name = provenance.get("config", {}).get("model", type(model).__name__)
    return write_report(run_dir / "report.html", f"pellucid: {name} run report", sections, provenance)
