"""Metric convolutions through convolutions vs unfold, on ResNet-20-sized layers.

p = 2:
``||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2`` (pellucid.nn.l2_distance_conv2d) against the obvious
``F.unfold`` + ``torch.cdist`` implementation; same inputs, outputs compared to 1e-4 (max abs
difference). Stereo: pellucid.nn.metric.conv.stereo_angle_conv2d (two convolutions) against the
``StereoAngle`` layer applied to every ``F.unfold`` patch (the generic conv form). Median of
``--repeats`` timings, forward and forward+backward, one thread.

Prints ONE JSON line. ``nice -n 15 .venv/bin/python -m benchmarks metric_conv_speed``
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # python benchmarks/NAME.py

from benchmarks import _harness as h  # noqa: E402

SUMMARY = "Metric convolutions (l2, stereo) as convolutions against unfold, on ResNet-20-sized layers"
EXPECTED_TIME = ("~1 min: 31 s of timed calls at the recorded medians (batch 128, 5 repeats, one thread; "
                 "results/metric_conv_speed.jsonl)")

# (name, batch, channels, size, stride): the three stages of CIFAR ResNet-20
LAYERS = [("stage1 16->16 32x32", 16, 32, 1), ("stage2 32->32 16x16", 32, 16, 1), ("stage3 64->64 8x8", 64, 8, 1)]


def stereo_unfold(x, layer, stride: int, padding: int, unfold):
    """The generic conv form: the vector layer on every unfolded 3x3 patch (``unfold``:
    ``torch.nn.functional.unfold``, passed in so that the module imports torch only when run)."""
    b, _, h, w = x.shape
    patches = unfold(x, 3, padding=padding, stride=stride).transpose(1, 2)  # (B, L, C*9)
    y = layer(patches.reshape(-1, patches.shape[-1]))
    ho, wo = (h + 2 * padding - 3) // stride + 1, (w + 2 * padding - 3) // stride + 1
    return y.view(b, ho * wo, -1).transpose(1, 2).reshape(b, -1, ho, wo)


def compare(name: str, args, fast, slow, params, slow_name: str) -> dict:
    """One table row: ``fast()`` against ``slow()`` (same inputs), their max abs difference, and
    median times forward and forward + backward (the gradients of ``params`` are cleared)."""
    import torch

    max_diff = float((fast() - slow()).detach().abs().max())

    def fwd_bwd(f):
        def run():
            f().sum().backward()
            for q in params:
                q.grad = None
        return run

    with torch.no_grad():
        t_fast, t_slow = h.timed(fast, args.repeats), h.timed(slow, args.repeats)
    tb_fast, tb_slow = h.timed(fwd_bwd(fast), args.repeats), h.timed(fwd_bwd(slow), args.repeats)
    return {"layer": name, "batch": args.batch, "max_abs_diff": max_diff,
            "forward_ms": {"conv": round(t_fast * 1e3, 2), slow_name: round(t_slow * 1e3, 2)},
            "forward_speedup": round(t_slow / t_fast, 2),
            "forward_backward_ms": {"conv": round(tb_fast * 1e3, 2), slow_name: round(tb_slow * 1e3, 2)},
            "forward_backward_speedup": round(tb_slow / tb_fast, 2)}


def parser():
    p = h.parser(__name__, __doc__, threads=1)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    return p


def main(argv: list[str] | None = None) -> dict:
    args = h.parse(parser(), argv)
    import torch
    import torch.nn.functional as F

    from pellucid.nn.metric.conv import l2_distance_conv2d, l2_distance_unfold_cdist, stereo_angle_conv2d
    from pellucid.nn.metric.distance import StereoAngle

    torch.manual_seed(0)
    rows, stereo_rows = [], []
    for name, ch, size, stride in LAYERS:
        x = torch.randn(args.batch, ch, size, size)
        c = (torch.randn(ch, ch, 3, 3) / (ch * 9) ** 0.5).requires_grad_(True)
        rows.append(compare(name, args, lambda: l2_distance_conv2d(x, c, stride, 1),
                            lambda: l2_distance_unfold_cdist(x, c, stride, 1), [c], "unfold_cdist"))
    for name, ch, size, stride in LAYERS:
        x = torch.randn(args.batch, ch, size, size)
        layer = StereoAngle(ch * 9, ch)
        stereo_rows.append(compare(name, args, lambda: stereo_angle_conv2d(x, layer, 3, stride, 1),
                                   lambda: stereo_unfold(x, layer, stride, 1, F.unfold),
                                   list(layer.parameters()), "unfold"))
    return {"layers": rows, "stereo_layers": stereo_rows, "threads": args.threads, "repeats": args.repeats,
            "device": "cpu"}


if __name__ == "__main__":
    h.script(__name__)
