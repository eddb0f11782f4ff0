"""Report sections built from a run's evaluation records (any classifier)."""

from __future__ import annotations

from pathlib import Path

from pellucid._io import weights_sha256
from pellucid.report.evaluation import MINIMAL_EXAMPLES
from pellucid.report.html import Figure, Section, count, percent
from pellucid.robust.reliability import ReliabilityCurve
from pellucid.viz import curves

# the evaluations table's columns, in this order
_SUMMARY_KEYS = ("attack", "budget", "norm", "eps", "n", "options", "seed", "weights", "checked_images",
                 "clean_accuracy", "robust_accuracy",
                 "precision_at_recall_0.8", "reliability_auc", "seconds")

# what each check's value measures, and whether it is a fraction (shown as a percentage)
_EVIDENCE = {"gradients": ("images with a zero or NaN gradient", True),
             "deterministic": ("max |logit difference|", False),
             "unbounded": ("accuracy at eps = the input range", True),
             "monotone": ("largest accuracy rise", True),
             "black_box": ("black-box gain", True),
             "adaptive_unbounded": ("accuracy at the largest eps", True)}
_RESULT = {True: "passed", False: "FAILED", None: "not run"}


def _option(v) -> str:
    """An option's value without Python's quotes: nested options as ``(k=v, ...)``."""
    if isinstance(v, dict):
        return "(" + ", ".join(f"{k}={_option(x)}" for k, x in sorted(v.items())) + ")"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_option(x) for x in v) + "]"
    return str(v)


def _identity_columns(summary: dict, current_weights: str | None) -> dict:
    options = summary.get("options") or {}
    recorded = summary.get("weights_sha256")
    return {"options": ", ".join(f"{k}={_option(v)}" for k, v in sorted(options.items())),
            "weights": "" if recorded is None or current_weights is None
            else "current" if recorded == current_weights else "earlier"}


def evidence(name: str, value: float | None) -> str:
    """A check's measured value as text: what it measures and the number (see :data:`_EVIDENCE`)."""
    if value is None:
        return "–"
    what, fraction = _EVIDENCE.get(name, ("value", False))
    if fraction and -1.0 <= value <= 1.0:
        number = percent(value)
    else:
        number = f"{value:.3g}"
    return f"{what}: {number}"


def check_rows(records: list[dict]) -> list[dict]:
    """One row per gradient-masking check of every record: check, result, evidence, threshold,
    detail (with the evaluation's name first, on its first row, when more than one record holds
    checks)."""
    with_checks = [r for r in records if r["summary"].get("checks")]
    rows = []
    for r in with_checks:
        for i, (name, c) in enumerate(r["summary"]["checks"].items()):
            row = {"evaluation": "" if i else r["name"]} if len(with_checks) > 1 else {}
            rows.append({**row, "check": name, "result": _RESULT[c.get("passed")],
                         "evidence": evidence(name, c.get("value")), "passes if": c.get("threshold", ""),
                         "detail": c.get("detail", "")})
    return rows


def robustness_sections(run_dir: Path | str, records: list[dict], *,
                        main: str | None = None) -> list[Section]:
    """Summary table, gradient-masking checks, AutoAttack stages, accuracy vs eps, reliability per
    attack and minimal perturbations, from ``records`` (see ``report.records``). ``main``: the
    name of the record whose accuracy-vs-eps curve is drawn (default: the first that has one)."""
    run_dir = Path(run_dir)
    if not records:
        return [Section("Robustness", "No evaluation recorded yet: run `pellucid evaluate DIR`."),
                Section("Gradient-masking checks", "None recorded: no evaluation yet.")]
    current = weights_sha256(run_dir / "model.safetensors")
    rows = []
    for r in records:
        values = {**r["summary"], **_identity_columns(r["summary"], current)}
        rows.append({k: values[k] for k in _SUMMARY_KEYS if k in values})
    sections = [Section("Robustness", "Every evaluation recorded for this run, each with what "
                        "identifies it: n test images, the attack's options, the seed, and whether "
                        "it evaluated the weights now in the run directory (current) or earlier "
                        "ones. Attacks use the true labels; robust = clean correct and adversarial "
                        "correct, counting only adversarial inputs inside the eps-ball.", table=rows)]
    checks = check_rows(records)
    with_checks = [r for r in records if r["summary"].get("checks")]
    if checks:
        on = sorted({r["summary"].get("checked_images") for r in with_checks} - {None})
        which = f" of {with_checks[0]['name']}" if len(with_checks) == 1 else ""
        images = (f" on the first {count(on[0])} test images" if len(on) == 1 else
                  f" on the first {' or '.join(count(n) for n in on)} test images (by evaluation)"
                  if on else "")
        sections.append(Section("Gradient-masking checks", f"The checks{which}{images}. A failed check "
                                "means the robust accuracy above may be overestimated (see "
                                "pellucid.robust.checks).", table=checks))
    else:
        sections.append(Section("Gradient-masking checks", "None recorded: every evaluation here ran "
                                "with --no-checks. Without them a robust accuracy may be "
                                "overestimated; run `pellucid evaluate DIR` with its checks."))
    for r in records:
        stages = r["summary"].get("stages", [])
        if len(stages) > 1:
            sections.append(Section(f"Stages of {r['name']}", "Each attack runs on the images still "
                                    "robust after the previous ones; time is wall time.",
                                    table=stages))
    figures = []
    with_curve = sorted((r for r in records if "accuracy_vs_eps" in r), key=lambda r: r["name"] != main)
    if with_curve:
        pts = with_curve[0]["accuracy_vs_eps"]
        png = curves.plot_accuracy_vs_eps(pts["points"], run_dir / "accuracy_vs_eps.png", None)
        figures.append(Figure(png,
                              f"Robust accuracy under PGD-40 (step eps/3) at {len(pts['points'])} eps "
                              f"values ({with_curve[0]['name']}); the monotone check reads this curve.",
                              n=pts["n"]))
    reliability = {r["name"]: ReliabilityCurve.from_dict(r["reliability"]) for r in records}
    ns = {r["summary"].get("n") for r in records}
    figures.append(Figure(curves.plot_reliability(reliability, run_dir / "reliability.png", title=None),
                          "Reliability: precision-recall of correctness, ranked by the max softmax "
                          "score; recall 1 sits at the accuracy, the dotted line at 80 % recall. One "
                          "curve per evaluation (P@R0.8: precision at 80 % recall, AP: average "
                          "precision).", n=ns.pop() if len(ns) == 1 else None))
    sections.append(Section("Accuracy vs eps and reliability", "", figures))
    for r in records:
        png = run_dir / f"{r['summary']['attack']}_examples.png"
        if "minimal" in r and png.is_file():
            m = r["minimal"]
            sections.append(Section(
                f"Minimal perturbations ({r['summary']['attack']})",
                f"{count(m['flipped'])} of {count(m['attacked'])} correct predictions flipped; median "
                f"L2 {_num(m['median_l2'])}, median L-inf {_num(m['median_linf'])}.",
                [Figure(png, "Columns: the first flipped predictions. Rows: clean input, adversarial "
                        "input (predicted class and probability), perturbation (bwr, centred at 0).",
                        n=min(MINIMAL_EXAMPLES, int(m["flipped"])), n_of="examples")]))
    return sections


def _num(v: float | None) -> str:
    return "–" if v is None or v != v else f"{v:.3g}"
