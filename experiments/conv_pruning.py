"""Could exact bounds skip most of the white-box conv layer's 64 posed kernels? (No.)

The conv layer's forward is ``max_k <p, g_k>`` over ``K P = 64`` unit-norm posed kernels ``g_k``
for every ``5 x 5`` patch ``p``, and the fused C loop already runs it at about the cores' FMA
rate. The only way to do less work and keep the same bits is to skip kernels that provably
cannot win. Cauchy-Schwarz gives such a bound: with a few "anchor" kernels ``a`` scored exactly,

    <p, g_k> <= <p, g_a> + ||p|| ||g_k - g_a||      for every anchor a,

so kernel ``k`` can be skipped at a pixel when ``min_a (s_a + ||p|| d(k, a))`` is below the best
anchor score (a skipped kernel cannot win or tie; the winner is then computed exactly, in the same
order). The loop scores 8 pixels of a row per SIMD register, so a kernel is skipped only where 8
neighbouring pixels all allow it. This measures, on 200 training images (clean and with the
recipe's noise augmentation), the fraction of non-anchor kernels that could be skipped and the
resulting work relative to scoring all 64 (anchors included, the bound's own cost excluded),
for anchors every 4th and every 8th posed kernel (rotations of 45 and 90 degrees).

    python experiments/conv_pruning.py [RUN_DIR]     # RUN_DIR: a trained whitebox-mnist35 run

Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F


def pruning(model, images: torch.Tensor, stride: int) -> dict:
    """Skippable fraction of the non-anchor (pixel, kernel) pairs, alone and in rows of 8 pixels."""
    k = model.conv.kernels.shape[-1]
    posed = model.conv._posed().reshape(-1, k * k)  # (64, 25), unit norm
    pixels = model.twostep(images)
    scores = F.conv2d(pixels, posed.view(-1, 1, k, k), padding=k // 2)  # (B, 64, H, W)
    norms = F.conv2d(pixels * pixels, torch.ones(1, 1, k, k), padding=k // 2).sqrt()  # ||p||, (B, 1, H, W)
    distance = torch.cdist(posed, posed)  # (64, 64)
    anchors = torch.arange(0, posed.shape[0], stride)
    others = torch.ones(posed.shape[0], dtype=torch.bool)
    others[anchors] = False
    best = scores[:, anchors].amax(1, keepdim=True)
    bound = (scores[:, anchors, None] + norms[:, :, None] * distance[anchors][None, :, :, None, None]).amin(1)
    skip = (bound < best - 1e-4)[:, others]  # (B, non-anchors, H, W); the margin covers rounding
    width = skip.shape[-1] // 8 * 8
    skip8 = skip[..., :width].unflatten(-1, (-1, 8)).all(-1)
    n, m = posed.shape[0], len(anchors)
    return {"anchors": m, "skippable": round(skip.float().mean().item(), 3),
            "skippable_in_rows_of_8": round(skip8.float().mean().item(), 3),
            "work_vs_all_64": round((m + (1 - skip8.float().mean().item()) * (n - m)) / n, 3)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", nargs="?", help="a trained whitebox-mnist35 run (default: initial weights)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from pellucid.data import load_dataset
    from pellucid.models import whitebox_mnist35
    from pellucid.models.checkpoint import load_model

    torch.manual_seed(args.seed)
    model = (load_model(args.run_dir)[0] if args.run_dir else whitebox_mnist35()).eval()
    images = load_dataset("mnist", "train", classes=(3, 5)).images[:200]
    noisy = (images + torch.randn(images.shape) * 0.25 + 0.05).clamp(0, 1)  # the recipe's augmentation
    with torch.no_grad():
        out = {name: {f"every_{s}th": pruning(model, x, s) for s in (4, 8)}
               for name, x in (("clean", images), ("noise", noisy))}
    return {"weights": args.run_dir or "initial", "seed": args.seed, **out}


if __name__ == "__main__":
    print(json.dumps(main()))
