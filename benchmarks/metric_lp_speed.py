"""General-p metric neurons: pellucid's blocked lp distance vs ``torch.cdist``, Table 1 sizes.

``d = (sum_i |x_i - c_i|^p)^{1/p}`` for the p of Table 1 that have no special kernel in
``torch.cdist`` (0.5 and 20; 1 and 2 use cdist in both), batch 50, D = 784, H in {100, 500}.
Same inputs; values and both gradients compared (max relative difference); median of
``--repeats`` forward+backward timings, one thread, all in the same process. With
``--compiled`` also the opt-in ``torch.compile`` path (``lp_distance(..., compiled=True)``; its
compilation, tens of seconds per shape, happens in the untimed comparison call).

Prints ONE JSON line. ``.venv/bin/python benchmarks/metric_lp_speed.py``
"""

from __future__ import annotations

import argparse
import json
import platform

import torch
from metric_conv_speed import timed

from pellucid.nn.metric.distance import lp_distance


def forward_backward(distance, x, c, weights):
    a, b = x.clone().requires_grad_(), c.clone().requires_grad_()
    (distance(a, b) * weights).sum().backward()
    return a.grad, b.grad


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--features", type=int, default=784)
    ap.add_argument("--hidden", type=int, nargs="+", default=[100, 500])
    ap.add_argument("--p", type=float, nargs="+", default=[0.5, 20.0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compiled", action="store_true", help="also time the torch.compile path")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for hidden in args.hidden:
        for p in args.p:
            torch.manual_seed(0)
            x = torch.rand(args.batch, args.features) * 2 - 1  # the models' [-1, 1] pixel space
            c = torch.randn(hidden, args.features) / 3  # LpDistance's init
            weights = torch.randn(args.batch, hidden)
            ours = lambda a, b, p=p: lp_distance(a, b, p)  # noqa: E731
            reference = lambda a, b, p=p: torch.cdist(a, b, p=p)  # noqa: E731
            rel = lambda u, v: float((u - v).abs().max() / v.abs().max())  # noqa: E731
            with torch.no_grad():
                value_diff = rel(ours(x, c), reference(x, c))
            grad_diff = max(rel(u, v) for u, v in zip(forward_backward(ours, x, c, weights),
                                                      forward_backward(reference, x, c, weights)))
            t_ours = timed(lambda: forward_backward(ours, x, c, weights), args.repeats)
            t_ref = timed(lambda: forward_backward(reference, x, c, weights), args.repeats)
            row = {"p": p, "hidden": hidden, "max_rel_diff_value": value_diff,
                   "max_rel_diff_grad": grad_diff,
                   "forward_backward_ms": {"pellucid": round(t_ours * 1e3, 2), "cdist": round(t_ref * 1e3, 2)},
                   "speedup": round(t_ref / t_ours, 2)}
            if args.compiled:
                compiled = lambda a, b, p=p: lp_distance(a, b, p, compiled=True)  # noqa: E731
                row["max_rel_diff_grad_compiled"] = max(rel(u, v) for u, v in zip(
                    forward_backward(compiled, x, c, weights), forward_backward(reference, x, c, weights)))
                t_comp = timed(lambda: forward_backward(compiled, x, c, weights), args.repeats)
                row["forward_backward_ms"]["pellucid_compiled"] = round(t_comp * 1e3, 2)
                row["speedup_compiled"] = round(t_ref / t_comp, 2)
            rows.append(row)
    print(json.dumps({"benchmark": "metric_lp_speed", "batch": args.batch, "features": args.features,
                      "rows": rows, "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__,
                      "python": platform.python_version(), "device": "cpu"}))


if __name__ == "__main__":
    main()
