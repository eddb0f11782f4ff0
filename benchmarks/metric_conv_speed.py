"""Metric convolutions through convolutions vs unfold, on ResNet-20-sized layers.

p = 2:
``||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2`` (pellucid.nn.l2_distance_conv2d) against the obvious
``F.unfold`` + ``torch.cdist`` implementation; same inputs, outputs compared to 1e-4 (max abs
difference). Stereo: pellucid.nn.metric.conv.stereo_angle_conv2d (two convolutions) against the
``StereoAngle`` layer applied to every ``F.unfold`` patch (the generic conv form). Median of
``--repeats`` timings, forward and forward+backward, one thread.

Prints ONE JSON line. ``nice -n 15 .venv/bin/python benchmarks/metric_conv_speed.py``
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from pellucid.nn.metric.distance import StereoAngle
from pellucid.nn.metric.conv import l2_distance_conv2d, l2_distance_unfold_cdist, stereo_angle_conv2d

# (name, batch, channels, size, stride): the three stages of CIFAR ResNet-20
LAYERS = [("stage1 16->16 32x32", 16, 32, 1), ("stage2 32->32 16x16", 32, 16, 1), ("stage3 64->64 8x8", 64, 8, 1)]


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def stereo_unfold(x: torch.Tensor, layer: StereoAngle, stride: int, padding: int) -> torch.Tensor:
    """The generic conv form: the vector layer on every unfolded 3x3 patch."""
    b, _, h, w = x.shape
    patches = F.unfold(x, 3, padding=padding, stride=stride).transpose(1, 2)  # (B, L, C*9)
    y = layer(patches.reshape(-1, patches.shape[-1]))
    ho, wo = (h + 2 * padding - 3) // stride + 1, (w + 2 * padding - 3) // stride + 1
    return y.view(b, ho * wo, -1).transpose(1, 2).reshape(b, -1, ho, wo)


def compare(name: str, args, fast, slow, params, slow_name: str) -> dict:
    """One table row: ``fast()`` against ``slow()`` (same inputs), their max abs difference, and
    median times forward and forward + backward (the gradients of ``params`` are cleared)."""
    max_diff = float((fast() - slow()).detach().abs().max())

    def fwd_bwd(f):
        def run():
            f().sum().backward()
            for q in params:
                q.grad = None
        return run

    with torch.no_grad():
        t_fast, t_slow = timed(fast, args.repeats), timed(slow, args.repeats)
    tb_fast, tb_slow = timed(fwd_bwd(fast), args.repeats), timed(fwd_bwd(slow), args.repeats)
    return {"layer": name, "batch": args.batch, "max_abs_diff": max_diff,
            "forward_ms": {"conv": round(t_fast * 1e3, 2), slow_name: round(t_slow * 1e3, 2)},
            "forward_speedup": round(t_slow / t_fast, 2),
            "forward_backward_ms": {"conv": round(tb_fast * 1e3, 2), slow_name: round(tb_slow * 1e3, 2)},
            "forward_backward_speedup": round(tb_slow / tb_fast, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
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
                                   lambda: stereo_unfold(x, layer, stride, 1),
                                   list(layer.parameters()), "unfold"))
    print(json.dumps({"benchmark": "metric_conv_speed", "layers": rows, "stereo_layers": stereo_rows, "threads": args.threads,
                      "repeats": args.repeats, "torch": torch.__version__, "python": platform.python_version(),
                      "device": "cpu", "cpu": platform.processor() or platform.machine()}))


if __name__ == "__main__":
    main()
