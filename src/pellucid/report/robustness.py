"""Report sections built from a run's evaluation records (any classifier)."""

from __future__ import annotations

from pathlib import Path

from pellucid._io import weights_sha256
from pellucid.report.html import Section
from pellucid.robust.reliability import ReliabilityCurve
from pellucid.viz import curves

_SUMMARY_KEYS = ("attack", "budget", "norm", "eps", "n", "options", "seed", "weights", "checked_images",
                 "clean_accuracy", "robust_accuracy",
                 "precision_at_recall_0.8", "reliability_auc", "seconds")


def _identity_columns(summary: dict, current_weights: str | None) -> dict:
    options = summary.get("options") or {}
    recorded = summary.get("weights_sha256")
    return {"options": ", ".join(f"{k}={v}" for k, v in sorted(options.items())),
            "weights": "" if recorded is None or current_weights is None
            else "current" if recorded == current_weights else "earlier"}


def robustness_sections(run_dir: Path | str, records: list[dict]) -> list[Section]:
    """Summary table, AutoAttack stages, gradient-masking checks, reliability per attack,
    accuracy vs eps and minimal perturbations, from ``records`` (see ``report.records``)."""
    run_dir = Path(run_dir)
    if not records:
        return [Section("Robustness", "No evaluation recorded yet: run `pellucid evaluate DIR`.")]
    current = weights_sha256(run_dir / "model.safetensors")
    rows = [{k: v for k, v in {**r["summary"], **_identity_columns(r["summary"], current)}.items()
             if k in _SUMMARY_KEYS} for r in records]
    sections = [Section("Robustness", "Every evaluation recorded for this run, each with what "
                        "identifies it: n test images, the attack's options, the seed, and whether "
                        "it evaluated the weights now in the run directory (current) or earlier "
                        "ones. Attacks use the true labels; robust = clean correct and adversarial "
                        "correct, counting only adversarial inputs inside the eps-ball.", table=rows)]
    for r in records:
        stages = r["summary"].get("stages", [])
        if len(stages) > 1:
            sections.append(Section(f"Stages of {r['name']}", "Each attack runs on the images still "
                                    "robust after the previous ones; seconds are wall time.",
                                    table=stages))
    check_rows = [{"evaluation": r["name"], "check": name, "result": {True: "pass", False: "FAIL",
                                                                      None: "not run"}[c["passed"]],
                   "threshold": c["threshold"], "detail": c["detail"]}
                  for r in records for name, c in r["summary"].get("checks", {}).items()]
    if check_rows:
        sections.append(Section("Gradient-masking checks", "A failed check means the robust accuracy "
                                "above may be overestimated (see pellucid.robust.checks).",
                                table=check_rows))
    reliability = {r["name"]: ReliabilityCurve.from_dict(r["reliability"]) for r in records}
    figures = [(curves.plot_reliability(reliability, run_dir / "reliability.png"),
                "Reliability curve per attack (precision-recall of correctness, max softmax score)")]
    with_curve = [r for r in records if "accuracy_vs_eps" in r]
    if with_curve:
        pts = with_curve[0]["accuracy_vs_eps"]
        figures.append((curves.plot_accuracy_vs_eps(
            pts["points"], run_dir / "accuracy_vs_eps.png",
            f"PGD-40 (step eps/3), first {pts['n']} test images"), "Accuracy vs eps"))
    sections.append(Section("Reliability and accuracy vs eps", "", figures))
    for r in records:
        png = run_dir / f"{r['summary']['attack']}_examples.png"
        if "minimal" in r and png.is_file():
            m = r["minimal"]
            sections.append(Section(
                f"Minimal perturbations ({r['summary']['attack']})",
                f"{m['flipped']} of {m['attacked']} correct predictions flipped; median L2 "
                f"{m['median_l2']}, median L-inf {m['median_linf']}.",
                [(png, "clean, adversarial and perturbation (bwr, centred at 0)")]))
    return sections
