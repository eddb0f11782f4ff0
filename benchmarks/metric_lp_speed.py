"""General-p metric neurons: pellucid's blocked lp distance vs ``torch.cdist``, Table 1 sizes.

``d = (sum_i |x_i - c_i|^p)^{1/p}`` for the p of Table 1 that have no special kernel in
``torch.cdist`` (0.5 and 20; 1 and 2 use cdist in both), batch 50, D = 784, H in {100, 500}.
Same inputs; values and both gradients compared (max relative difference); median of
``--repeats`` forward+backward timings, one thread, all in the same process. With
``--compiled`` also the opt-in ``torch.compile`` path (``lp_distance(..., compiled=True)``; its
compilation, tens of seconds per shape, happens in the untimed comparison call).

Prints ONE JSON line. ``.venv/bin/python -m benchmarks metric_lp_speed``
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # python benchmarks/NAME.py

from benchmarks import _harness as h  # noqa: E402

SUMMARY = "General-p metric neurons: pellucid's blocked lp distance against torch.cdist, Table 1 sizes"
EXPECTED_TIME = ("~15 s at the per-call times in docs/metric.md (one thread); --compiled adds tens of "
                 "seconds of compilation per p and H")


def forward_backward(distance, x, c, weights):
    a, b = x.clone().requires_grad_(), c.clone().requires_grad_()
    (distance(a, b) * weights).sum().backward()
    return a.grad, b.grad


def parser():
    p = h.parser(__name__, __doc__, threads=1)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--features", type=int, default=784)
    p.add_argument("--hidden", type=int, nargs="+", default=[100, 500])
    p.add_argument("--p", type=float, nargs="+", default=[0.5, 20.0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compiled", action="store_true", help="also time the torch.compile path")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = h.parse(parser(), argv)
    import torch

    from pellucid.nn.metric.distance import lp_distance

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
            t_ours = h.timed(lambda: forward_backward(ours, x, c, weights), args.repeats)
            t_ref = h.timed(lambda: forward_backward(reference, x, c, weights), args.repeats)
            row = {"p": p, "hidden": hidden, "max_rel_diff_value": value_diff,
                   "max_rel_diff_grad": grad_diff,
                   "forward_backward_ms": {"pellucid": round(t_ours * 1e3, 2), "cdist": round(t_ref * 1e3, 2)},
                   "speedup": round(t_ref / t_ours, 2)}
            if args.compiled:
                compiled = lambda a, b, p=p: lp_distance(a, b, p, compiled=True)  # noqa: E731
                row["max_rel_diff_grad_compiled"] = max(rel(u, v) for u, v in zip(
                    forward_backward(compiled, x, c, weights), forward_backward(reference, x, c, weights)))
                t_comp = h.timed(lambda: forward_backward(compiled, x, c, weights), args.repeats)
                row["forward_backward_ms"]["pellucid_compiled"] = round(t_comp * 1e3, 2)
                row["speedup_compiled"] = round(t_ref / t_comp, 2)
            rows.append(row)
    return {"batch": args.batch, "features": args.features, "rows": rows, "threads": args.threads,
            "repeats": args.repeats, "device": "cpu"}


if __name__ == "__main__":
    h.script(__name__)
