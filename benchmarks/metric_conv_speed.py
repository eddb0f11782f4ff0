"""Metric convolution (p = 2) through convolutions vs unfold + cdist, on ResNet-20-sized layers.

``||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2`` (pellucid.nn.l2_distance_conv2d) against the obvious
``F.unfold`` + ``torch.cdist`` implementation; same inputs, outputs compared to 1e-4 (max abs
difference). Median of ``--repeats`` timings, forward and forward+backward, one thread.

Prints ONE JSON line. ``nice -n 15 .venv/bin/python benchmarks/metric_conv_speed.py``
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from pellucid.nn.metric_conv import l2_distance_conv2d, l2_distance_unfold_cdist

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for name, ch, size, stride in LAYERS:
        x = torch.randn(args.batch, ch, size, size)
        c = (torch.randn(ch, ch, 3, 3) / (ch * 9) ** 0.5).requires_grad_(True)
        fast_out, slow_out = l2_distance_conv2d(x, c, stride, 1), l2_distance_unfold_cdist(x, c, stride, 1)
        max_diff = float((fast_out - slow_out).abs().max())

        def fwd(f):
            return lambda: f(x, c, stride, 1)

        def fwd_bwd(f):
            def run():
                f(x, c, stride, 1).sum().backward()
                c.grad = None
            return run

        with torch.no_grad():
            t_fast, t_slow = timed(fwd(l2_distance_conv2d), args.repeats), timed(fwd(l2_distance_unfold_cdist), args.repeats)
        tb_fast, tb_slow = timed(fwd_bwd(l2_distance_conv2d), args.repeats), timed(fwd_bwd(l2_distance_unfold_cdist), args.repeats)
        rows.append({"layer": name, "batch": args.batch, "max_abs_diff": max_diff,
                     "forward_ms": {"conv": round(t_fast * 1e3, 2), "unfold_cdist": round(t_slow * 1e3, 2)},
                     "forward_speedup": round(t_slow / t_fast, 2),
                     "forward_backward_ms": {"conv": round(tb_fast * 1e3, 2), "unfold_cdist": round(tb_slow * 1e3, 2)},
                     "forward_backward_speedup": round(tb_slow / tb_fast, 2)})
    print(json.dumps({"benchmark": "metric_conv_speed", "layers": rows, "threads": args.threads,
                      "repeats": args.repeats, "torch": torch.__version__, "python": platform.python_version(),
                      "device": "cpu", "cpu": platform.processor() or platform.machine()}))


if __name__ == "__main__":
    main()
