"""pellucid's own APGD components against ART's on the same trained model and test images.

Pairs (``--attacks``):

- ``ce``: ``apgd-ce-native`` vs ART's ``apgd-ce`` (as the ``standard`` budget runs it);
- ``dlr``: ``apgd-dlr-native`` vs ART's ``apgd-dlr``;
- ``t``: ``apgd-t-native`` vs ART's ``AutoProjectedGradientDescent(targeted=True,
  loss_type="difference_logits_ratio")`` run once per target class, on the images no earlier
  target broke, with the same targets (the ``--n-targets`` highest non-true logits of the clean
  image). ART's targeted run succeeds only on the target class; here, as in the native attack,
  an image counts as broken when the model misclassifies ART's output as any class.

Every attack runs on the first ``--n`` test images of the run (the images and order
``pellucid evaluate`` uses), L-inf ``--eps``, ``--steps`` steps, one restart, the true labels,
and a generator seeded with ``--seed`` (pellucid's stream of the first evaluation chunk). An
image is robust when the model classifies it correctly both clean and at the attack's output
(outputs outside the eps-ball count as clean, as in the evaluator). Wall times are measured in
this process, one attack after the other; compare the ratios. Prints ONE JSON line.

    python -m benchmarks apgd_crosscheck runs/wb314 --attacks ce dlr --threads 1
    python -m benchmarks apgd_crosscheck runs/wb10-cos --n 500 --attacks ce t --threads 1
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # python benchmarks/NAME.py

from benchmarks import _harness as h  # noqa: E402

SUMMARY = "pellucid's native APGD attacks (CE, DLR, targeted) against ART's on the same model and images"
EXPECTED_TIME = ("~4-5 min with one thread: 245 s of attacks for ce + dlr on 1,902 images, 317 s for "
                 "ce + t on 500 (results/apgd_crosscheck.jsonl)")

PAIRS = {"ce": ("apgd-ce-native", "apgd-ce"), "dlr": ("apgd-dlr-native", "apgd-dlr"),
         "t": ("apgd-t-native", "art-apgd-t")}


def art_apgd_targeted(model, x, y, *, eps, steps, n_targets, generator, batch_size):
    """ART's targeted APGD on the DLR loss, one run per target (the highest non-true clean
    logits, in order), each on the images still classified correctly; ART's step (eps / 3) as
    in pellucid's ART attacks."""
    import numpy as np
    import torch
    from art.attacks.evasion import AutoProjectedGradientDescent

    from pellucid.models.inference import predict_logits
    from pellucid.robust import within_budget
    from pellucid.robust.apgd_attacks import target_classes
    from pellucid.robust.art_backend import run_art

    clean = predict_logits(model, x)
    targets = target_classes(clean, y, n_targets)
    out = x.clone()
    robust = clean.argmax(1) == y
    for rank in range(targets.shape[1]):
        idx = torch.nonzero(robust).squeeze(1)
        if not len(idx):
            break
        adv = run_art(lambda clf: AutoProjectedGradientDescent(
            clf, norm=np.inf, eps=eps, eps_step=eps / 3, max_iter=steps, targeted=True,
            nb_random_init=1, batch_size=batch_size, loss_type="difference_logits_ratio",
            verbose=False), model, x[idx], targets[idx, rank], generator=generator)
        broken = (predict_logits(model, adv).argmax(1) != y[idx]) & \
            within_budget(adv - x[idx], eps, "linf")
        out[idx[broken]] = adv[broken]
        robust[idx[broken]] = False
    return out


def robust_flags(model, x, y, adv, eps):
    """Per image: correct on the clean image and at the output (outside the ball: the clean one)."""
    import torch

    from pellucid.models.inference import predict_logits
    from pellucid.robust import within_budget

    inside = within_budget(adv - x, eps, "linf")
    adv = torch.where(inside.view(-1, *[1] * (x.dim() - 1)), adv, x)
    return (predict_logits(model, x).argmax(1) == y) & (predict_logits(model, adv).argmax(1) == y), inside


def parser():
    p = h.parser(__name__, __doc__, threads=None, seed=0)
    p.add_argument("model_dir")
    p.add_argument("--n", type=int, default=None, help="first N test images (default: all)")
    p.add_argument("--attacks", nargs="+", default=["ce", "dlr"], choices=list(PAIRS))
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--n-targets", type=int, default=9)
    p.add_argument("--batch-size", type=int, default=1024)
    return p


def main(argv: list[str] | None = None) -> dict:
    args = h.parse(parser(), argv)
    import torch

    from pellucid.models import load_model
    from pellucid.models.inference import predict_logits
    from pellucid.report.evaluation import load_test_set
    from pellucid.robust import run_attack

    h.preload("pellucid.robust.apgd_attacks", "pellucid.robust.art_backend")

    model, config = load_model(Path(args.model_dir))
    test = load_test_set(config, None, args.n)
    x, y = test.images, test.labels
    clean_ok = predict_logits(model, x).argmax(1) == y
    pairs = {}
    for pair in args.attacks:
        rows = {}
        for name in PAIRS[pair]:
            generator = torch.Generator().manual_seed(args.seed)
            start = time.perf_counter()
            if name == "art-apgd-t":
                adv = art_apgd_targeted(model, x, y, eps=args.eps, steps=args.steps,
                                        n_targets=args.n_targets, generator=generator,
                                        batch_size=args.batch_size)
            else:
                options = {"n_target_classes": args.n_targets} if name == "apgd-t-native" else {}
                adv = run_attack(name, model, x, y, eps=args.eps, steps=args.steps, restarts=1,
                                 generator=generator, batch_size=args.batch_size,
                                 **options).adversarial
            seconds = time.perf_counter() - start
            robust, inside = robust_flags(model, x, y, adv, args.eps)
            rows[name] = {"robust": robust, "seconds": seconds, "outside": int((~inside).sum())}
        native, art = PAIRS[pair]
        a, b = rows[native], rows[art]
        pairs[pair] = {
            "native": native, "art": art,
            "native_robust_accuracy": round(float(a["robust"].float().mean()), 6),
            "art_robust_accuracy": round(float(b["robust"].float().mean()), 6),
            "difference_points": round(
                float(a["robust"].float().mean() - b["robust"].float().mean()) * 100, 3),
            "art_breaks_native_does_not": torch.nonzero(a["robust"] & ~b["robust"]).squeeze(1).tolist(),
            "native_breaks_art_does_not": torch.nonzero(~a["robust"] & b["robust"]).squeeze(1).tolist(),
            "native_seconds": round(a["seconds"], 2), "art_seconds": round(b["seconds"], 2),
            "art_over_native_time": round(b["seconds"] / a["seconds"], 2),
            "outside_ball": {native: a["outside"], art: b["outside"]},
        }
    return {"model": config["model"], "model_dir": args.model_dir, "n": len(x), "eps": args.eps,
            "steps": args.steps, "restarts": 1, "seed": args.seed, "n_targets": args.n_targets,
            "batch_size": args.batch_size, "threads": torch.get_num_threads(),
            "clean_accuracy": round(float(clean_ok.float().mean()), 6), "pairs": pairs}


if __name__ == "__main__":
    h.script(__name__)
