"""AutoAttack on a trained model's full test set: robust accuracy, wall time per attack, checks.

Runs the ensemble (APGD-CE, APGD-DLR, DeepFool, Square; ART implementations) at L-inf eps 0.3
with the true labels on every test image, then the gradient-masking checks, and prints ONE JSON
line, and records the evaluation in the model directory (``DIR/evaluations/``) so that
``pellucid evaluate DIR --report`` shows it. The paper: clean 99.527 %, AutoAttack 92.008 % (ART
default budget, authors' weights).

    python -m benchmarks autoattack_full runs/seeds/seed314 --budget standard
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # python benchmarks/NAME.py

from benchmarks import _harness as h  # noqa: E402

SUMMARY = "AutoAttack on a trained model's full test set: robust accuracy, time per attack, checks"
EXPECTED_TIME = "~1 h for the white-box network with --budget standard (docs/whitebox.md)"


def parser():
    from pellucid.robust import BUDGETS

    p = h.parser(__name__, __doc__, seed=0)
    p.add_argument("model_dir")
    p.add_argument("--budget", default="standard", choices=sorted(BUDGETS))
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--save", default=None, help="write the adversarial images (safetensors) here")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = h.parse(parser(), argv)
    import torch

    from pellucid.data import load_dataset
    from pellucid.models import load_model
    from pellucid.report.records import save_record
    from pellucid.robust import evaluate_robustness
    from pellucid.robust.checks import evaluation_checks

    model, config = load_model(Path(args.model_dir))
    data = config["data"]
    test = load_dataset(data["dataset"], "test", classes=data.get("classes"))
    if args.limit:
        test = test.subset(slice(0, args.limit))
    t0 = time.perf_counter()
    res = evaluate_robustness(model, test.images, test.labels, attack="autoattack", eps=args.eps,
                              budget=args.budget, seed=args.seed,
                              log=h.log)
    attack_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    checks, points = evaluation_checks(model, res, test.images, test.labels, limit=None,
                                       seed=args.seed)
    checks_s = time.perf_counter() - t1
    if args.save:
        from pellucid._io import save_tensors_atomic
        save_tensors_atomic(args.save, {"adversarial": res.adversarial, "robust": res.robust.to(torch.uint8)})
    res.checks = checks
    s = res.summary()
    summary = {"model": config["model"], "model_dir": args.model_dir, **s}
    if not args.limit:  # only full-test-set runs become the model's record
        save_record(args.model_dir, summary, res, eps_points={"points": points, "n": len(test)})
    return {
        "model": config["model"], "model_dir": args.model_dir,
        "budget": args.budget, "eps": args.eps, "n": s["n"], "clean_accuracy": s["clean_accuracy"],
        "autoattack_accuracy": s["robust_accuracy"],
        "precision_at_recall_0.8": s["precision_at_recall_0.8"],
        "attack_seconds": round(attack_s, 1),
        "stages": [{**st, "images_per_s": round(st["attacked"] / st["seconds"], 2) if st["seconds"]
                    else None} for st in res.stages],
        "checks": {c.name: c.summary() for c in checks}, "checks_seconds": round(checks_s, 1)}


if __name__ == "__main__":
    h.script(__name__)
