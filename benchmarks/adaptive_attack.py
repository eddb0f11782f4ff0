"""The adaptive budget on the first N test images: robust accuracy against the standard budgets,
which stage broke which image, wall time per stage and its extrapolation to the full test set.

Runs, on the same images and seed: PGD-40, AutoAttack ``standard`` (ART's Square; skip with
``--no-standard``) and the adaptive cascade (``pellucid evaluate DIR --budget adaptive``, whose
first stages are its base budget, ``standard-native`` by default). To extrapolate the cascade's
time it also runs on the first ``--calibrate`` images (default N / 2) and fits, per stage,
``seconds = a + b * attacked`` (a: the per-iteration overhead that does not grow with the images);
the linear extrapolation ``seconds * full / N`` is reported too, as an upper bound. Prints ONE
JSON line; writes nothing into the model directory.

    python -m benchmarks adaptive_attack runs/wb314 --limit 100 --threads 2
    python -m benchmarks adaptive_attack runs/wb314 --limit 100 --transfer-from runs/lenet
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # python benchmarks/NAME.py

from benchmarks import _harness as h  # noqa: E402

if TYPE_CHECKING:
    from pellucid.robust.budgets import AdaptiveBudget

SUMMARY = "Adaptive attack cascade on the first N test images: robust accuracy, stage times, full-set extrapolation"
EXPECTED_TIME = ("~35 min at --limit 100 (ART's Square 27 min, the cascade 298 s on one thread; "
                 "docs/adaptive-attacks.md); --no-standard skips the Square part")

FULL_TEST_SET = 1902  # MNIST 3 vs 5 test images


def _cascade(model, test, n: int, budget: AdaptiveBudget, eps: float, seed: int):
    """The cascade on the first ``n`` images; its stage rows get ``cpu_s``, the process CPU time
    of each stage (on a shared machine, with one thread, closer to the machine's own speed than
    the wall time, which also counts the time other jobs held the core)."""
    from pellucid.robust import evaluate_robustness

    sub = test.subset(slice(0, n))
    marks = [time.process_time()]

    def log(message: str) -> None:
        marks.append(time.process_time())
        h.log(message)

    start = time.perf_counter()
    res = evaluate_robustness(model, sub.images, sub.labels, attack="autoattack", eps=eps, seed=seed,
                              budget=budget, log=log)
    for row, a, b in zip(res.stages, marks, marks[1:]):
        row["cpu_s"] = round(b - a, 2)
    return res, time.perf_counter() - start


def _extrapolate(rows: list[dict], calib: list[dict] | None, n: int, full: int, key: str) -> dict:
    """Per stage, from ``row[key]`` (wall ``seconds`` or ``cpu_s``): linear ``t * full / n`` and,
    with a calibration run, ``a + b * attacked`` fitted on the two runs, ``attacked`` scaled to
    the full set."""
    out, linear_total, fitted_total = [], 0.0, 0.0
    for i, row in enumerate(rows):
        linear = row[key] * full / n
        fitted = linear
        if calib is not None and row["attacked"] != calib[i]["attacked"]:
            b = (row[key] - calib[i][key]) / (row["attacked"] - calib[i]["attacked"])
            a = row[key] - b * row["attacked"]
            if b > 0 and a >= 0:
                fitted = a + b * row["attacked"] * full / n
        out.append({"attack": row["attack"], "linear_s": round(linear, 1), "fitted_s": round(fitted, 1)})
        linear_total += linear
        fitted_total += fitted
    return {"from": key, "stages": out, "linear_s": round(linear_total, 1),
            "fitted_s": round(fitted_total, 1)}


def parser():
    p = h.parser(__name__, __doc__, threads=2, seed=0)
    p.add_argument("model_dir")
    p.add_argument("--limit", type=int, default=100, help="first N test images")
    p.add_argument("--calibrate", type=int, default=None, help="second, smaller run (default N/2; 0: none)")
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--no-standard", action="store_true", help="skip AutoAttack standard (ART Square)")
    for name in ("steps", "restarts", "queries", "transfer_steps", "decision_queries", "square_restarts"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    for name in ("losses", "temperatures", "transfer_from", "base_budget"):
        p.add_argument("--" + name.replace("_", "-"), default=None)
    return p


def main(argv: list[str] | None = None) -> dict:
    args = h.parse(parser(), argv)
    import torch

    from pellucid.data import load_dataset
    from pellucid.models import load_model
    from pellucid.robust import evaluate_robustness
    from pellucid.robust.budgets import BUDGETS, AdaptiveBudget
    from pellucid.robust.diagnostics import adaptive_diagnostics

    fields = ("steps", "restarts", "queries", "transfer_steps", "decision_queries", "square_restarts",
              "losses", "temperatures", "transfer_from", "base_budget")
    budget = AdaptiveBudget(**{k: getattr(args, k) for k in fields if getattr(args, k) is not None})
    model, config = load_model(Path(args.model_dir))
    data = config["data"]
    test = load_dataset(data["dataset"], "test", classes=data.get("classes"))
    n = min(args.limit, len(test))
    sub = test.subset(slice(0, n))
    reference = {}
    start = time.perf_counter()
    reference["pgd40"] = evaluate_robustness(model, sub.images, sub.labels, eps=args.eps, steps=40,
                                             seed=args.seed).robust_accuracy
    if not args.no_standard:
        std = evaluate_robustness(model, sub.images, sub.labels, attack="autoattack", eps=args.eps,
                                  budget="standard", seed=args.seed, log=h.log)
        reference["autoattack_standard"] = std.robust_accuracy
        reference["autoattack_standard_broken"] = torch.nonzero(~std.robust & (
            std.clean_logits.argmax(1) == sub.labels)).squeeze(1).tolist()
    reference_s = time.perf_counter() - start
    res, seconds = _cascade(model, test, n, budget, args.eps, args.seed)
    calib_n = n // 2 if args.calibrate is None else args.calibrate
    calib = _cascade(model, test, calib_n, budget, args.eps, args.seed)[0] if calib_n else None
    base_accuracy = res.stages[len(BUDGETS[budget.base_budget]) - 1]["robust_accuracy_after"]
    by = res.info["broken_by_image"]
    start = time.perf_counter()
    checks, diagnostics = adaptive_diagnostics(model, sub.images, sub.labels, res.adversarial,
                                               budget=budget, seed=args.seed)
    diagnostics_s = time.perf_counter() - start
    return {
        "model": config["model"], "model_dir": args.model_dir,
        "n": n, "eps": args.eps, "seed": args.seed, "threads": args.threads,
        "budget": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(budget).items()},
        "clean_accuracy": res.clean_accuracy, "pgd40_accuracy": reference["pgd40"],
        "autoattack_standard_accuracy": reference.get("autoattack_standard"),
        "base_budget_accuracy": base_accuracy, "adaptive_accuracy": res.robust_accuracy,
        "broken_by": res.info["broken_by"],
        "broken_by_image": {i: b for i, b in enumerate(by) if b not in (None, "clean")},
        "autoattack_standard_broken": reference.get("autoattack_standard_broken"),
        "stages": res.stages, "cascade_s": round(seconds, 1), "seconds_per_image": round(seconds / n, 3),
        "reference_s": round(reference_s, 1), "calibration_n": calib_n,
        "cascade_cpu_s": round(sum(r["cpu_s"] for r in res.stages), 1),
        "extrapolated_full_set": {"n": FULL_TEST_SET, **{key: _extrapolate(
            res.stages, calib.stages if calib is not None else None, n, FULL_TEST_SET, key)
            for key in ("seconds", "cpu_s")}},
        "diagnostics": {"accuracy_vs_eps": diagnostics["accuracy_vs_eps"], "gates": diagnostics["gates"],
                        "median_gradient_norm": {kind: {layer: hist["median"] for layer, hist in d.items()}
                                                 for kind, d in diagnostics["gradient_norms"].items()},
                        "checks": {c.name: c.summary() for c in checks},
                        "seconds": round(diagnostics_s, 1)}}


if __name__ == "__main__":
    h.script(__name__)
