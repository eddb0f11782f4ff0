"""Input gradients of few-channel convolutions on the CPU: oneDNN's backward against ATen's direct
kernel (``pellucid.nn.conv_gradients``), layer by layer and over whole attacks, in one process.

``layers``: the input-gradient backward of single ``nn.Conv2d`` shapes (256 images), PyTorch's
default (oneDNN) against ``aten._slow_conv2d_backward`` (the direct kernel), with the largest
difference between the two gradients. ``attacks``: the same trained model attacked twice with
the same seed, once as the attacks run now (``attack_mode``: the direct kernel for layers with at
most 3 input channels) and once with the layers left to PyTorch's default; seconds and images
broken, the runs alternating. Prints ONE JSON line.

    python -m benchmarks conv_input_gradient runs/lenetf10-adv [--n 1000] [--repeats 3]
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # python benchmarks/NAME.py

from benchmarks import _harness as h  # noqa: E402

SUMMARY = "Few-channel conv input gradients on CPU: oneDNN against ATen's direct kernel, per layer and per attack"
EXPECTED_TIME = "~2 min on 2 cores for a LeNet with --n 1000 (layers ~15 s, then PGD-40 and APGD-CE twice each)"

# (in, out, kernel, padding, image side): LeNet's and Madry's first layers, an RGB stem, and two
# wider layers the direct kernel is not used for
LAYERS = [(1, 6, 5, 2, 28), (1, 32, 5, 2, 28), (3, 16, 3, 1, 32), (3, 64, 3, 1, 32),
          (6, 16, 5, 0, 14), (32, 64, 5, 2, 14)]


def parser():
    p = h.parser(__name__, __doc__, threads=2, seed=0)
    p.add_argument("run_dir", nargs="?", default=None, help="a trained model directory (omit: layers only)")
    p.add_argument("--n", type=int, default=1000, help="test images attacked (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of each (default: %(default)s)")
    return p


def layer_rows(repeats: int) -> list[dict]:
    import torch
    import torch.nn.functional as F

    rows = []
    for cin, cout, k, pad, side in LAYERS:
        gen = torch.Generator().manual_seed(0)
        w, x = torch.randn(cout, cin, k, k, generator=gen), torch.randn(256, cin, side, side, generator=gen)
        g = torch.randn(F.conv2d(x, w, padding=pad).shape, generator=gen)
        default = lambda: torch.ops.aten.convolution_backward(  # noqa: E731
            g, x, w, None, (1, 1), (pad, pad), (1, 1), False, (0, 0), 1, (True, False, False))[0]
        direct = lambda: torch.ops.aten._slow_conv2d_backward(  # noqa: E731
            g, x, w, (k, k), (1, 1), (pad, pad), (True, False, False))[0]
        a, b = h.timed(default, repeats * 3), h.timed(direct, repeats * 3)
        rows.append({"layer": f"{cin}->{cout}, {k}x{k}, {side} px", "in_channels": cin,
                     "default_ms": round(a * 1e3, 2), "direct_ms": round(b * 1e3, 2),
                     "speedup": round(a / b, 2), "max_abs_difference": float((default() - direct()).abs().max()),
                     "max_abs_gradient": float(default().abs().max())})
        h.log(rows[-1])
    return rows


@contextlib.contextmanager
def default_backward():
    """Attacks with every layer left to PyTorch's default backward (the hooks never installed)."""
    import pellucid.models.inference as inference

    real = inference.direct_conv_input_gradients
    inference.direct_conv_input_gradients = lambda model: contextlib.nullcontext(model)
    try:
        yield
    finally:
        inference.direct_conv_input_gradients = real


def attack_rows(run_dir: str, n: int, repeats: int, seed: int) -> dict:
    from pellucid.models import load_model, read_config
    from pellucid.report.evaluation import load_test_set
    from pellucid.robust import evaluate_robustness

    model, config = load_model(run_dir)
    test = load_test_set(read_config(run_dir), None, n)
    eps = {"mnist": 0.3}.get(config["data"]["dataset"], 0.1)
    out = {"model": config["model"], "n": len(test), "eps": eps}
    for attack, options in (("pgd", {"steps": 40}), ("apgd-ce-native", {})):
        times, robust = {"direct": [], "default": []}, {}
        for _ in range(repeats):
            for variant in ("direct", "default"):  # alternating, so background load hits both alike
                with default_backward() if variant == "default" else contextlib.nullcontext():
                    start = time.perf_counter()
                    res = evaluate_robustness(model, test.images, test.labels, attack=attack, eps=eps,
                                              seed=seed, **options)
                    times[variant].append(time.perf_counter() - start)
                robust[variant] = res.robust_accuracy
        med = {k: statistics.median(v) for k, v in times.items()}
        out[attack] = {"direct_seconds": round(med["direct"], 2), "default_seconds": round(med["default"], 2),
                       "speedup": round(med["default"] / med["direct"], 2),
                       "robust_accuracy_direct": robust["direct"], "robust_accuracy_default": robust["default"]}
        h.log(attack, out[attack])
    return out


def main(argv: list[str] | None = None) -> dict:
    args = h.parse(parser(), argv)
    h.preload("torch", "pellucid.robust.evaluate", "pellucid.robust.apgd_attacks")
    result = {"layers": layer_rows(args.repeats)}
    if args.run_dir:
        result["attacks"] = attack_rows(args.run_dir, args.n, args.repeats, args.seed)
    return result


if __name__ == "__main__":
    h.script(__name__)
