"""pellucid's FAB-T (``fab-t-native``) against torchattacks' FAB on the same trained model and images.

Both run the targeted L-inf FAB of AutoAttack's "standard" version on the first ``--n`` test
images of the run (the images and order ``pellucid evaluate`` uses), with the true labels:
``--eps`` (default: the run's validation eps, ``train.val_eps`` of its config), ``--steps``
iterations, one restart, alpha_max 0.1, eta 1.05, beta 0.9 and the same targets, the
``--n-targets`` (at most classes - 1) highest non-true logits of the clean image, one run per
target on the images no earlier target broke. torchattacks' side is
``torchattacks.FAB(norm="Linf", multi_targeted=True, n_classes=targets + 1)``, whose targets are
the 2nd to (targets + 1)-th highest logits: the same classes on the correctly classified images
it attacks. pellucid's generator is seeded with ``--seed`` (unused with one restart), as is
torchattacks (``seed``). An image is robust when the model classifies it correctly both clean and
at the attack's output (outputs outside the eps-ball count as clean, as in the evaluator).

For every image one attack breaks and the other does not, the L-inf distance of the breaking
output, and the closest adversarial the other attack reaches without the eps bound (all
``--steps`` iterations for each target, smallest distance over the targets; ``null``: none
found): pellucid's :func:`pellucid.robust.fab.fab_targeted` with ``stop_within_eps=False``,
torchattacks' ``attack_single_run_targeted`` per target. Wall times are measured in this process,
one attack after the other (the diagnostics are not timed). torchattacks is a cross-check only
(``pip install torchattacks==3.5.1 --no-deps``), not a dependency of pellucid. Prints ONE JSON
line.

    python -m benchmarks fab_crosscheck runs/wb314 --n 200 --threads 1
    python -m benchmarks fab_crosscheck runs/lenet10-adv --n 200 --threads 1
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # python benchmarks/NAME.py

from benchmarks import _harness as h  # noqa: E402

SUMMARY = "pellucid's native FAB-T against torchattacks' FAB (targeted, L-inf) on the same model and images"
EXPECTED_TIME = ("~20 s with one thread for 200 images of runs/wb314 (two classes: 1 target), ~2.5 min "
                 "for 200 of runs/lenet10-adv (9 targets) (results/fab_crosscheck.jsonl)")

FAB_PARAMETERS = {"alpha_max": 0.1, "eta": 1.05, "beta": 0.9}


def run_eps(config: dict) -> float:
    """The run's eps: ``train.val_eps`` of its config (0.3 where it has none)."""
    return float((config.get("train") or {}).get("val_eps") or 0.3)


def torchattacks_fab(model, eps: float, steps: int, n_targets: int, seed: int):
    """torchattacks' targeted L-inf FAB with AutoAttack's standard parameters."""
    import torchattacks

    return torchattacks.FAB(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, verbose=False,
                            seed=seed, multi_targeted=True, n_classes=n_targets + 1, **FAB_PARAMETERS)


def linf(a, b):
    return (a - b).flatten(1).abs().amax(1)


def pellucid_closest(model, x, y, *, n_targets: int, steps: int) -> list:
    """Per image the smallest L-inf distance pellucid's FAB reaches over the targets, unbounded."""
    import math

    import torch

    from pellucid.models.inference import eval_mode, predict_logits
    from pellucid.robust.apgd_attacks import target_classes
    from pellucid.robust.fab import fab_targeted

    best = torch.full((len(x),), math.inf, dtype=torch.float64)
    with eval_mode(model):
        targets = target_classes(predict_logits(model, x), y, n_targets)
        for rank in range(targets.shape[1]):
            _, norms = fab_targeted(model, x, y, targets[:, rank], eps=1.0, steps=steps,
                                    stop_within_eps=False, **FAB_PARAMETERS)
            best = torch.minimum(best, norms.double())
    return [None if math.isinf(v) else round(v, 6) for v in best.tolist()]


def torchattacks_closest(model, x, y, *, n_targets: int, steps: int, seed: int) -> list:
    """The same for torchattacks' FAB: ``attack_single_run_targeted`` once per target rank."""
    import math

    import torch

    from pellucid.models.inference import predict_logits

    attack = torchattacks_fab(model, 1.0, steps, n_targets, seed)
    best = torch.full((len(x),), math.inf, dtype=torch.float64)
    for rank in range(n_targets):
        attack.target_class = rank + 2  # the (rank + 2)-th highest logit
        adv = attack.attack_single_run_targeted(x, y)
        fooled = predict_logits(model, adv).argmax(1) != y
        best = torch.where(fooled, torch.minimum(best, linf(adv, x).double()), best)
    return [None if math.isinf(v) else round(v, 6) for v in best.tolist()]


def parser():
    p = h.parser(__name__, __doc__, threads=None, seed=0)
    p.add_argument("model_dir")
    p.add_argument("--n", type=int, default=None, help="first N test images (default: all)")
    p.add_argument("--eps", type=float, default=None, help="L-inf budget (default: the run's val_eps)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--n-targets", type=int, default=9, help="targets (at most classes - 1; default 9)")
    p.add_argument("--batch-size", type=int, default=1024)
    return p


def main(argv: list[str] | None = None) -> dict:
    args = h.parse(parser(), argv)
    import torch

    from benchmarks.apgd_crosscheck import robust_flags
    from pellucid.models import load_model
    from pellucid.models.inference import predict_logits
    from pellucid.report.evaluation import load_test_set
    from pellucid.robust import run_attack

    try:
        h.preload("pellucid.robust.fab", "torchattacks")
    except ImportError as e:
        raise SystemExit(f"fab_crosscheck needs torchattacks ({e}): pip install torchattacks==3.5.1 "
                         "--no-deps") from None

    model, config = load_model(Path(args.model_dir))
    model.eval()
    eps = args.eps if args.eps is not None else run_eps(config)
    test = load_test_set(config, None, args.n)
    x, y = test.images, test.labels
    clean = predict_logits(model, x)
    clean_ok = clean.argmax(1) == y
    n_targets = min(args.n_targets, clean.shape[1] - 1)

    rows = {}
    start = time.perf_counter()
    run = run_attack("fab-t-native", model, x, y, eps=eps, steps=args.steps, restarts=1,
                     n_target_classes=n_targets, generator=torch.Generator().manual_seed(args.seed),
                     batch_size=args.batch_size, **FAB_PARAMETERS)
    rows["pellucid"] = (run.adversarial, time.perf_counter() - start)
    start = time.perf_counter()
    adv = torchattacks_fab(model, eps, args.steps, n_targets, args.seed)(x, y)
    rows["torchattacks"] = (adv.detach(), time.perf_counter() - start)
    model.eval()  # torchattacks restores the mode it found; make sure

    flags = {}
    for name, (out, seconds) in rows.items():
        robust, inside = robust_flags(model, x, y, out, eps)
        flags[name] = {"robust": robust, "inside": inside, "seconds": seconds, "linf": linf(out, x)}
    p, t = flags["pellucid"], flags["torchattacks"]
    only_t = torch.nonzero(p["robust"] & ~t["robust"]).squeeze(1)
    only_p = torch.nonzero(~p["robust"] & t["robust"]).squeeze(1)
    diagnostics = {"steps": args.steps}
    if len(only_t):
        diagnostics["pellucid_closest_where_torchattacks_only"] = pellucid_closest(
            model, x[only_t], y[only_t], n_targets=n_targets, steps=args.steps)
    if len(only_p):
        diagnostics["torchattacks_closest_where_pellucid_only"] = torchattacks_closest(
            model, x[only_p], y[only_p], n_targets=n_targets, steps=args.steps, seed=args.seed)
    broken_both = ~p["robust"] & ~t["robust"] & clean_ok
    return {
        "model": config["model"], "model_dir": args.model_dir, "n": len(x), "eps": eps,
        "steps": args.steps, "restarts": 1, "n_targets": n_targets, **FAB_PARAMETERS,
        "seed": args.seed, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "clean_accuracy": round(float(clean_ok.float().mean()), 6),
        "pellucid_robust_accuracy": round(float(p["robust"].float().mean()), 6),
        "torchattacks_robust_accuracy": round(float(t["robust"].float().mean()), 6),
        "difference_points": round(float(p["robust"].float().mean() - t["robust"].float().mean()) * 100, 3),
        "torchattacks_breaks_pellucid_does_not": {
            "images": only_t.tolist(),
            "torchattacks_linf": [round(v, 6) for v in t["linf"][only_t].tolist()]},
        "pellucid_breaks_torchattacks_does_not": {
            "images": only_p.tolist(),
            "pellucid_linf": [round(v, 6) for v in p["linf"][only_p].tolist()]},
        "closest_unbounded": diagnostics,
        # where both break an image: how far each output is from the clean image
        "median_linf_both_broke": {
            name: round(float(f["linf"][broken_both].double().median()), 6) if broken_both.any() else None
            for name, f in flags.items()},
        "pellucid_seconds": round(p["seconds"], 2), "torchattacks_seconds": round(t["seconds"], 2),
        "torchattacks_over_pellucid_time": round(t["seconds"] / p["seconds"], 2),
        "outside_ball": {name: int((~f["inside"]).sum()) for name, f in flags.items()},
        "pellucid_log": {k: v for k, v in run.stages[0].items() if not k.startswith("_")},
    }


if __name__ == "__main__":
    h.script(__name__)
