"""Could TF32 matrix multiplies explain Table 1's invex / ordinary gaps? A probe on trained runs.

The authors' notebook trained on a GPU with ``torch.set_float32_matmul_precision('high')``: every
matrix multiply rounds its operands to TF32 (10 explicit mantissa bits instead of 23). This
script emulates that rounding on the CPU (round to nearest even, operands of every ``F.linear``)
and measures, on each trained run directory given, (a) the test accuracy without and with it, and
(b) the metric layer's distances: their spread over inputs against the error the rounding adds.
Prints ONE JSON line.

    python experiments/metric_tf32_probe.py runs/metric/t1runs/ordinary_5_s0 runs/metric/t1runs/invex_5_s0
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from pellucid.data import load_dataset
from pellucid.models.checkpoint import load_model
from pellucid.report import environment
from pellucid.robust.evaluate import predict_logits


def to_tf32(t: torch.Tensor) -> torch.Tensor:
    """Round float32 to TF32 precision (10 mantissa bits), to nearest, ties to even."""
    bits = t.contiguous().view(torch.int32)
    lsb = (bits >> 13) & 1
    return ((bits + 0x0FFF + lsb) & -8192).view(torch.float32)


class _TF32Linear(torch.autograd.Function):
    """``x W^T + b`` on TF32-rounded operands; the backward's two products round theirs too.

    That is what a GPU with ``set_float32_matmul_precision('high')`` does to ``F.linear`` and to
    the two matrix multiplies of its gradient (accumulation stays float32 in both).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, linear):
        x32, w32 = to_tf32(x), to_tf32(weight)
        ctx.save_for_backward(x32, w32)
        ctx.has_bias = bias is not None
        return linear(x32, w32, bias)

    @staticmethod
    def backward(ctx, grad):
        x32, w32 = ctx.saved_tensors
        g32 = to_tf32(grad)
        gx = g32 @ w32 if ctx.needs_input_grad[0] else None
        gw = g32.reshape(-1, g32.shape[-1]).t() @ x32.reshape(-1, x32.shape[-1]) if ctx.needs_input_grad[1] else None
        gb = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb, None


@contextlib.contextmanager
def tf32_linear() -> Iterator[None]:
    """Every ``F.linear`` (``nn.Linear`` included) multiplies TF32-rounded operands, as on the GPU.

    Forward and backward (see :class:`_TF32Linear`), so it also emulates TF32 *training*.
    """
    original = F.linear

    def linear(x, weight, bias=None):
        return _TF32Linear.apply(x, weight, bias, original)

    F.linear = linear
    try:
        yield
    finally:
        F.linear = original


def _check_rounding() -> None:
    one = torch.tensor([1.0, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 1 + 2 ** -10, -(1 + 3 * 2 ** -11)])
    assert to_tf32(one).tolist() == [1.0, 1.0, 1 + 2 ** -9, 1 + 2 ** -10, -(1 + 2 ** -9)]


def probe(directory: str, images: torch.Tensor, labels: torch.Tensor, n_distances: int) -> dict:
    model, _ = load_model(directory)
    metric = next((m for m in model.modules() if hasattr(m, "invex_value")), None)
    with torch.no_grad():
        acc = (predict_logits(model, images, 500).argmax(1) == labels).float().mean().item()
        with tf32_linear():
            acc_tf32 = (predict_logits(model, images, 500).argmax(1) == labels).float().mean().item()
        row = {"run": directory, "test_accuracy": round(100 * acc, 2),
               "test_accuracy_tf32_inference": round(100 * acc_tf32, 2)}
        if metric is not None:  # the distances f(x - c_j) of an invex / ordinary layer
            x = images[:n_distances].flatten(1) * 2 - 1  # the model's own [-1, 1] scaling
            d = metric.invex_value(x)
            with tf32_linear():
                err = metric.invex_value(x) - d
            spread, noise = d.std(0), err.std(0)
            row.update(distance_mean=round(d.mean().item(), 3), distance_std_over_inputs=round(spread.mean().item(), 4),
                       tf32_error_std=round(noise.mean().item(), 6),
                       tf32_error_over_spread=float(f"{(noise / spread).max().item():.3g}"))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="trained metric-mlp run directories")
    parser.add_argument("--distances", type=int, default=2000, help="test images for the distance statistics")
    args = parser.parse_args()
    _check_rounding()
    t0 = time.perf_counter()
    test = load_dataset("fashion-mnist", "test")
    rows = [probe(d, test.images, test.labels, args.distances) for d in args.runs]
    print(json.dumps({"benchmark": "metric_tf32_probe", "n_test": len(test), "runs": rows,
                      "seconds": round(time.perf_counter() - t0, 1), "environment": environment()}))


if __name__ == "__main__":
    main()
