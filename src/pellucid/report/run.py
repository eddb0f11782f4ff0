"""The run report: one self-contained HTML file per model directory."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from pellucid._io import weights_sha256
from pellucid.data.datasets import ImageDataset
from pellucid.models.whitebox import WhiteBoxNet
from pellucid.report.html import Figure, Section, Stat, count, duration, norm_label, percent, write_report
from pellucid.report.records import RECORDS_DIR, load_records
from pellucid.report.robustness import robustness_sections
from pellucid.report.whitebox import whitebox_sections
from pellucid.robust.evaluate import RobustnessResult
from pellucid.viz import curves


def run_report(run_dir: Path | str, model: nn.Module, test: ImageDataset,
               result: RobustnessResult | None = None) -> Path:
    """Write ``run_dir/report.html``: the headline numbers, every recorded evaluation (tables,
    gradient-masking checks, accuracy vs eps, reliability per attack, minimal perturbations),
    training (learning curve and log) and, for the white-box network, its layers and "how the
    model sees" ``result``'s adversarial inputs; provenance last."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    history = [json.loads(line) for line in metrics.read_text().splitlines()
               if line.strip()] if metrics.is_file() else []
    config_path = run_dir / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    records = load_records(run_dir)
    main = main_record(run_dir, records, result)
    sections = robustness_sections(run_dir, records, main=main["name"] if main else None)
    if history:
        sections.append(_training_section(run_dir, history, config))
    if isinstance(model, WhiteBoxNet):
        sections += whitebox_sections(run_dir, model, test, result)
    provenance: dict = {}
    if main is not None:
        provenance.update({"device": main["summary"].get("device"),
                           "evaluation seed": main["summary"].get("seed")})
    if (config.get("train") or {}).get("seed") is not None:
        provenance["training seed"] = config["train"]["seed"]
    if config:
        provenance["config"] = config
    name = config.get("model", type(model).__name__)
    return write_report(run_dir / "report.html", f"pellucid: {name} run report", sections, provenance,
                        headline=headline(main, model, history, config),
                        n=main["summary"].get("n") if main else None)


def main_record(run_dir: Path | str, records: list[dict],
                result: RobustnessResult | None = None) -> dict | None:
    """The evaluation the headline shows: among the records of the weights now in ``run_dir``
    (all records if none is), the one of ``result`` (same attack, threat model and n) if there is
    one, the most recently written otherwise."""
    if not records:
        return None
    current = weights_sha256(Path(run_dir) / "model.safetensors")
    pool = [r for r in records if r["summary"].get("weights_sha256") == current] or records
    if result is not None:
        pool = [r for r in pool if (r["summary"].get("attack"), r["summary"].get("norm"),
                                    r["summary"].get("eps"), r["summary"].get("n"))
                == (result.attack, result.norm, result.eps, result.n)] or pool

    def written(r: dict) -> float:
        try:
            return (Path(run_dir) / RECORDS_DIR / f"{r['name']}.json").stat().st_mtime
        except OSError:
            return 0.0

    return max(pool, key=written)


def attack_name(summary: dict) -> str:
    """``pgd, 40 steps, L-inf eps 0.3``: the attack and threat model of a record's summary."""
    attack = summary.get("attack", "?")
    if summary.get("budget"):
        attack += f" ({summary['budget']})"
    if summary.get("steps"):
        attack += f", {summary['steps']} steps"
    eps = summary.get("eps")
    if not isinstance(eps, (int, float)):
        return attack
    return f"{attack}, {norm_label(summary.get('norm'))} eps {eps:g}"


def headline(main: dict | None, model: nn.Module, history: list[dict], config: dict) -> list[Stat]:
    """The run's key numbers: accuracies of ``main`` (an evaluation record), the gradient-masking
    checks' tally, the parameter count and the training time (the sum of the epochs' wall times)."""
    stats = []
    if main is not None:
        s = main["summary"]
        where = f"{count(s['n'])} test images" + (f" ({s['dataset']})" if s.get("dataset") else "")
        stats.append(Stat("clean accuracy", _pct(s.get("clean_accuracy")), where))
        stats.append(Stat("robust accuracy", _pct(s.get("robust_accuracy")), attack_name(s)))
        p80 = s.get("precision_at_recall_0.8")
        if p80 is not None and p80 == p80:
            ci = s.get("precision_at_recall_0.8_ci95")
            note = (f"95 % interval {percent(ci[0], 1)} – {percent(ci[1], 1)}"
                    if ci and None not in ci and ci[0] == ci[0] else "under the same attack")
            stats.append(Stat("precision at 80 % recall", percent(p80), note))
        checks = s.get("checks")
        if checks:
            ran = [c for c in checks.values() if c.get("passed") is not None]
            failed = sum(c["passed"] is False for c in ran)
            skipped = len(checks) - len(ran)
            note = f"{len(ran)} run" + (f", {skipped} not run" if skipped else "")
            if s.get("checked_images"):
                note += f", on {count(s['checked_images'])} images"
            stats.append(Stat("gradient-masking checks", f"{failed} FAILED" if failed else
                              "all passed" if ran else "none run", note))
        else:
            stats.append(Stat("gradient-masking checks", "not run", "evaluated with --no-checks"))
    stats.append(Stat("parameters", count(sum(p.numel() for p in model.parameters())),
                      config.get("model", type(model).__name__)))
    seconds = [r["epoch_seconds"] for r in history if isinstance(r.get("epoch_seconds"), (int, float))]
    if seconds:
        stats.append(Stat("training time", duration(sum(seconds)),
                          f"{len(history)} epochs (validation included)"))
    return stats


def _pct(v: float | None) -> str:
    return "–" if v is None or v != v else percent(v)


def _training_section(run_dir: Path, history: list[dict], config: dict) -> Section:
    png = curves.plot_learning_curve(history, run_dir / "learning_curve.png", title=None)
    train, data = config.get("train") or {}, config.get("data") or {}
    what = "the training split and the held-out validation images"
    if train.get("val_pgd_steps") and train.get("val_eps") is not None:
        what += f", clean and under PGD-{train['val_pgd_steps']} at L-inf eps {train['val_eps']:g}"
    return Section("Training", "", [Figure(png, f"Accuracy per epoch on {what}.", n=data.get("n_val"),
                                           n_of="validation images")],
                   table=history, table_beside=True)
