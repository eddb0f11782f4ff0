"""The white-box network side by side with CNN baselines: one row per trained model directory.

For each ``DIR`` (written by ``pellucid train``): parameters, training time (the sum of the
run's ``epoch_seconds``, validation included, from ``metrics.jsonl``), clean accuracy, PGD-40
(step eps / 3) and AutoAttack accuracy at L-inf eps (default 0.3) on the full test set (or the
first ``--autoattack-limit`` images for AutoAttack) (true labels; robust = clean
correct and adversarial correct), precision at 80 % recall under each attack, and the
gradient-masking checks. Every figure is computed in this process. Prints ONE JSON line; each
evaluation is also recorded in ``DIR/evaluations/`` for ``pellucid evaluate DIR --report``.

    python -m benchmarks robustness_table runs/wb314 runs/lenet runs/lenet-adv --budget standard
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # python benchmarks/NAME.py

from benchmarks import _harness as h  # noqa: E402

SUMMARY = "The white-box network beside CNN baselines: one row of robustness figures per model directory"
EXPECTED_TIME = ("~1 h per model directory for AutoAttack standard on the full test set "
                 "(docs/whitebox.md: LeNet 3,062 s, one thread)")


def training_seconds(run_dir: Path) -> float | None:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    return round(sum(json.loads(line)["epoch_seconds"] for line in path.read_text().splitlines()
                     if line.strip()), 1)


def row(run_dir: Path, budget: str, eps: float, seed: int, limit: int | None,
        autoattack_limit: int | None = None) -> dict:
    from pellucid.data import load_dataset
    from pellucid.models import load_model
    from pellucid.report.records import save_record
    from pellucid.robust import evaluate_robustness
    from pellucid.robust.checks import evaluation_checks

    model, config = load_model(run_dir)
    data = config["data"]
    test = load_dataset(data["dataset"], "test", classes=data.get("classes"))
    if limit:
        test = test.subset(slice(0, limit))
    out = {"model": config["model"], "model_dir": str(run_dir),
           "parameters": sum(p.numel() for p in model.parameters()),
           "train": {k: config.get("train", {}).get(k) for k in ("epochs", "adv_eps", "noise_p")},
           "training_seconds": training_seconds(run_dir), "n": len(test)}
    log = lambda m: h.log(f"{run_dir}: {m}")  # noqa: E731
    full_test = test
    for attack, kw in (("pgd", {"steps": 40, "step_size": round(eps / 3, 12)}),  # 0.1 at eps 0.3
                       ("autoattack", {"budget": budget, "log": log})):
        if attack == "autoattack" and autoattack_limit and autoattack_limit < len(full_test):
            test, limit = full_test.subset(slice(0, autoattack_limit)), autoattack_limit
            out["autoattack_n"] = len(test)
        res = evaluate_robustness(model, test.images, test.labels, attack=attack, eps=eps,
                                  seed=seed, **kw)
        checks, points = evaluation_checks(model, res, test.images, test.labels, limit=500,
                                           seed=seed)
        res.checks = checks
        summary = {"model": config["model"], "model_dir": str(run_dir), **res.summary()}
        if attack == "pgd":
            summary["steps"] = 40
        if not limit:
            save_record(run_dir, summary, res, eps_points={"points": points, "n": min(500, len(test))})
        key = "pgd40" if attack == "pgd" else "autoattack"
        out["clean_accuracy"] = res.clean_accuracy
        out[f"{key}_accuracy"] = res.robust_accuracy
        out[f"{key}_precision_at_recall_0.8"] = summary["precision_at_recall_0.8"]
        out[f"{key}_seconds"] = round(res.seconds, 1)
        out[f"{key}_checks"] = {c.name: c.passed for c in checks}
        if res.stages:
            out["autoattack_stages"] = res.stages
        log(f"{attack}: {res.robust_accuracy:.4f} in {res.seconds:.1f} s")
    return out


def parser():
    from pellucid.robust import BUDGETS

    p = h.parser(__name__, __doc__, seed=0)
    p.add_argument("model_dirs", nargs="+", type=Path)
    p.add_argument("--budget", default="standard", choices=sorted(BUDGETS))
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--limit", type=int, default=None, help="first N test images (not recorded)")
    p.add_argument("--autoattack-limit", type=int, default=None,
                   help="AutoAttack on the first N test images only (PGD-40 on all; not recorded)")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = h.parse(parser(), argv)
    from pellucid.cli._common import strict_json

    h.preload("pellucid.data", "pellucid.models", "pellucid.report.records", "pellucid.robust.checks")
    t0 = time.perf_counter()
    rows = [row(d, args.budget, args.eps, args.seed, args.limit, args.autoattack_limit)
            for d in args.model_dirs]
    return strict_json({"budget": args.budget, "eps": args.eps, "rows": rows, "seconds": h.seconds_since(t0)})


if __name__ == "__main__":
    h.script(__name__)
