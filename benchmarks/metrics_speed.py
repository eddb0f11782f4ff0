"""Attribution metrics: pellucid (batched tensors) against Quantus 0.6.0 (per-step NumPy loops).

The same batch (``--batch`` MNIST test images, 1x28x28; random images if MNIST is not on disk),
the same seeded, untrained small CNN, the same gradient attributions and the same settings for
both libraries, in one process with ``--threads`` CPU threads. Every timing is the median of
``--repeats`` calls after one warm-up call. ``ratio`` = Quantus seconds / pellucid seconds.

What each row compares (Quantus class: settings):

* ``infidelity``: ``Infidelity`` (4x4 patches set to black one after another, no scaling) vs
  :func:`~pellucid.explain.metrics.infidelity` given those patch perturbations; also
  ``infidelity_gaussian``: pellucid's optimally scaled Gaussian infidelity (n = 50) vs Captum's
  ``infidelity(normalize=True)`` with the same noise (Quantus has no such mode);
* ``faithfulness_correlation``: 100 random subsets of 224 pixels, black baseline;
* ``faithfulness_estimate``: one pixel per step (784 steps), black baseline;
* ``monotonicity_correlation``: 28 pixels per step, 100 uniform draws per step;
* ``max_sensitivity``: 20 uniform draws of radius 0.2, gradient explanations;
* ``random_logit``, ``model_parameter_randomisation``: gradient explanations;
* ``deletion``: MoRF pixel flipping, one pixel per step (``PixelFlipping``, softmax);
* ``pointing_game`` and ``focus`` (on 56x56 mosaics of the batch).

``model_calls``: forwards of the model (explanations included) in one call of each metric: the
same pixels pass through the network either way, so on one CPU thread, where the network's
arithmetic dominates, fewer and larger calls buy little; per-call latency (a GPU, small models)
is where they pay off. ``model_only_s`` replays pellucid's forwards (same shapes, the same
input-gradient backwards) and nothing else: the network's share of pellucid's time, and a floor
no implementation can go below. ``best_possible_ratio`` = Quantus seconds / that floor: where it
is under 10, a 10x speed-up over Quantus is out of reach on this CPU whatever the metric code does.

Prints ONE JSON line. ``.venv/bin/python -m benchmarks metrics_speed [--batch 16] [--repeats 3]``
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Callable

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # python benchmarks/NAME.py

from benchmarks import _harness as h  # noqa: E402

SUMMARY = "Attribution metrics: pellucid's batched tensors against Quantus 0.6.0's per-step NumPy loops"
EXPECTED_TIME = ("~4-5 min: 251 s of timed calls at the recorded medians (--batch 16 --repeats 3, one "
                 "thread; results/metrics_speed.jsonl)")

SAMPLING = ("infidelity_gaussian", "faithfulness_correlation", "monotonicity_correlation",
            "max_sensitivity")


MODELS = {"small-cnn": (16, 32), "tiny-cnn": (4, 8)}  # channels of the two conv layers


def cnn(channels: tuple[int, int], seed: int):
    """Two conv layers, adaptive pooling, a linear head: takes 28x28 digits and 56x56 mosaics."""
    import torch
    from torch import nn

    c1, c2 = channels
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                         nn.Flatten(), nn.Linear(c2 * 16, 10)).eval()


def mnist_batch(n: int, seed: int):
    import torch

    try:
        from pellucid.data import load_dataset

        test = load_dataset("mnist", "test")
        return test.images[:4 * n].float(), test.labels[:4 * n].long(), "mnist-test"
    except Exception:  # no data on disk: the timings do not depend on the pixels
        g = torch.Generator().manual_seed(seed)
        images = torch.rand(4 * n, 1, 28, 28, generator=g)
        return images, torch.randint(0, 10, (4 * n,), generator=g), "random"


def timed_with_calls(fn: Callable[[], object], repeats: int, model) -> tuple[float, list[tuple[tuple[int, ...], bool]]]:
    """Median seconds of ``repeats`` calls, and the model calls (forwards) one call makes: the
    input shape of each and whether it ran with gradients."""
    import torch

    calls = []
    hook = model.register_forward_pre_hook(
        lambda _m, args: calls.append((tuple(args[0].shape), torch.is_grad_enabled())))
    try:
        fn()  # warm-up, counting forwards
    finally:
        hook.remove()
    return h.timed(fn, repeats, warmup=False), calls


def model_only(model, calls: list[tuple[tuple[int, ...], bool]], repeats: int) -> float:
    """Median seconds of the network's own arithmetic in a metric call: the same forwards (same
    input shapes), each followed by an input-gradient backward where the call had gradients on,
    and nothing else. No implementation of the metric can take less, so ``reference_s /
    model_only_s`` bounds the speed-up any implementation could reach on this CPU."""
    import torch

    inputs = [(torch.rand(shape), grad) for shape, grad in calls]

    def replay():
        for x, grad in inputs:
            if grad:
                x = x.requires_grad_(True)
                torch.autograd.grad(model(x).sum(), x)
            else:
                with torch.no_grad():
                    model(x)

    return h.timed(replay, repeats)


def gradient_explain_func():
    """Quantus ``explain_func``: the same gradient explainer pellucid uses."""
    import torch

    from pellucid.explain import Gradient

    def gradient_np(model, inputs, targets, **kwargs):
        return Gradient(model).attribute(torch.as_tensor(inputs), torch.as_tensor(targets).long()).numpy()

    return gradient_np


def patch_perturbations(x, patch: int):
    """Quantus' Infidelity perturbations ``x - x_k``: patches blacked out one after another."""
    import torch

    black = x.flatten(1).amin(1).view(-1, 1, 1, 1)
    current, out = x.clone(), []
    for i in range(x.shape[2] // patch):
        for j in range(x.shape[3] // patch):
            current = current.clone()
            current[:, :, i * patch:(i + 1) * patch, j * patch:(j + 1) * patch] = black
            out.append(x - current)
    return torch.stack(out)


def cases(model, x, y, a, mosaics, a_mosaic):
    """``name -> (pellucid call, reference call, settings)``."""
    import quantus
    import torch
    from captum.metrics import infidelity as captum_infidelity

    from pellucid.explain import metrics as M

    gradient_np = gradient_explain_func()
    xn, yn, an = x.numpy(), y.numpy(), a.numpy()
    quiet = dict(disable_warnings=True, display_progressbar=False, abs=False, normalise=False)

    def q(metric, **kw):
        kw.setdefault("a_batch", an)
        kw.setdefault("x_batch", xn)
        kw.setdefault("y_batch", yn)
        return lambda: metric(model=model, channel_first=True, device="cpu", **kw)

    patches = patch_perturbations(x, 4)
    noise = 0.1 * torch.randn(50, *x.shape, generator=torch.Generator().manual_seed(0))

    def captum_noise(inputs):
        i = noise.transpose(0, 1).reshape(-1, *x.shape[1:])
        return i, inputs - i

    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[..., 7:21, 7:21] = True
    flags = [tuple(int(v) for v in m[0, ::28, ::28].flatten()) for m in mosaics.masks]
    return {
        "infidelity": (
            lambda: M.infidelity(model, x, a, y, perturbations=patches, optimal_scaling=False),
            q(quantus.Infidelity(perturb_patch_sizes=[4], n_perturb_samples=1, **quiet), softmax=False),
            {"patch": 4, "perturbations": len(patches)}),
        "infidelity_gaussian": (
            lambda: M.infidelity(model, x, a, y, perturbations=noise),
            lambda: captum_infidelity(model, captum_noise, x, a, target=y, n_perturb_samples=50,
                                      normalize=True),
            {"reference": "captum", "n": 50, "noise_std": 0.1}),
        "faithfulness_correlation": (
            lambda: M.faithfulness_correlation(model, x, a, y, n_draws=100, subset_size=224,
                                               baseline="black"),
            q(quantus.FaithfulnessCorrelation(nr_runs=100, subset_size=224, return_aggregate=False,
                                              **quiet), softmax=False),
            {"n_draws": 100, "subset_size": 224}),
        "faithfulness_estimate": (
            lambda: M.faithfulness_estimate(model, x, a, y, features_in_step=1, baseline="black"),
            q(quantus.FaithfulnessEstimate(features_in_step=1, **quiet), softmax=False),
            {"features_in_step": 1}),
        "monotonicity_correlation": (
            lambda: M.monotonicity_correlation(model, x, a, y, n_samples=100, features_in_step=28),
            q(quantus.MonotonicityCorrelation(nr_samples=100, features_in_step=28, **quiet),
              softmax=False),
            {"n_samples": 100, "features_in_step": 28}),
        "max_sensitivity": (
            lambda: M.max_sensitivity(model, x, a, y, n_draws=20, radius=0.2),
            q(quantus.MaxSensitivity(nr_samples=20, lower_bound=0.2, **quiet), softmax=False,
              explain_func=gradient_np),
            {"n_draws": 20, "radius": 0.2}),
        "random_logit": (
            lambda: M.random_logit(model, x, a, y, similarity="ssim_flat"),
            q(quantus.RandomLogit(num_classes=10, **quiet), softmax=False, explain_func=gradient_np),
            {"similarity": "ssim_flat"}),
        "model_parameter_randomisation": (
            lambda: M.model_parameter_randomisation(model, x, a, y),
            q(quantus.MPRT(**quiet), explain_func=gradient_np), {"similarity": "spearman"}),
        "deletion": (
            lambda: M.deletion(model, x, a, y, features_in_step=1, baseline="black", softmax=True),
            q(quantus.PixelFlipping(features_in_step=1, **quiet), softmax=True),
            {"features_in_step": 1, "order": "morf"}),
        "pointing_game": (
            lambda: M.pointing_game(model, x, a, y, mask=mask),
            q(quantus.PointingGame(**quiet), s_batch=mask[:, :1].numpy().astype(float)), {}),
        "focus": (
            lambda: M.focus(model, mosaics.images, a_mosaic, mosaics.targets, mask=mosaics.masks),
            q(quantus.Focus(**quiet), x_batch=mosaics.images.numpy(), y_batch=mosaics.targets.numpy(),
              a_batch=a_mosaic.numpy(), custom_batch=flags), {"mosaics": len(mosaics.images)}),
    }


def parser():
    p = h.parser(__name__, __doc__, threads=1, seed=0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--only", nargs="*", help="metric rows to run (default: all)")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = h.parse(parser(), argv)
    warnings.simplefilter("ignore")  # Quantus warns on every call
    import numpy as np
    import quantus

    from pellucid.explain import Gradient
    from pellucid.explain import metrics as M

    pool, labels, data = mnist_batch(args.batch, args.seed)
    x, y = pool[:args.batch], labels[:args.batch]
    mosaics = M.make_mosaics(pool, labels, args.batch, seed=args.seed)
    results, summary = {}, {}
    for name in args.models:
        model = cnn(MODELS[name], args.seed)
        a = Gradient(model).attribute(x, y)
        a_mosaic = Gradient(model).attribute(mosaics.images, mosaics.targets)
        rows = {}
        for metric, (ours, theirs, settings) in cases(model, x, y, a, mosaics, a_mosaic).items():
            if args.only and metric not in args.only:
                continue
            (t_ours, c_ours), (t_theirs, c_theirs) = (timed_with_calls(ours, args.repeats, model),
                                                      timed_with_calls(theirs, args.repeats, model))
            floor = model_only(model, c_ours, args.repeats) if c_ours else 0.0
            rows[metric] = {"pellucid_s": round(t_ours, 5), "reference_s": round(t_theirs, 4),
                            "ratio": round(t_theirs / t_ours, 1),
                            "model_calls": {"pellucid": len(c_ours), "reference": len(c_theirs)},
                            "images_through_model": {"pellucid": sum(c[0][0] for c in c_ours),
                                                     "reference": sum(c[0][0] for c in c_theirs)},
                            "model_only_s": round(floor, 5),
                            "best_possible_ratio": round(t_theirs / floor, 1) if floor else None,
                            **settings}
        results[name] = rows
        sampled = [rows[k]["ratio"] for k in SAMPLING if k in rows]
        summary[name] = min(sampled) if sampled else None
    return {
        "batch": args.batch, "input": [1, 28, 28], "data": data,
        "models": {k: f"2 conv layers {MODELS[k]} channels, seeded, untrained" for k in args.models},
        "repeats": args.repeats,
        "reference": f"quantus {quantus.__version__} (captum for infidelity_gaussian)",
        "metrics": results, "sampling_metrics_min_ratio": summary,
        "sampling_metrics_best_possible_ratio": {
            k: {m: r["best_possible_ratio"] for m, r in v.items() if m in SAMPLING} for k, v in results.items()},
        "goal_10x_met": {k: v is not None and v >= 10 for k, v in summary.items()},
        "numpy": np.__version__,
    }


if __name__ == "__main__":
    h.script(__name__)
