"""The noise-gradient grid of one hidden unit: noise inputs above, their input gradients below.

Gradients are drawn channel-summed with the diverging colormap centred at 0 (white = 0), all on
one colour scale (the largest ``|value|`` of the grid), so that draws where the unit is weak look
weak. Titles are drawn literally (no mathtext).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from pellucid.viz.style import plt, save, show_signed

__all__ = ["unit_gradient_grid"]

LITERAL = {"parse_math": False, "usetex": False}
COLUMNS = 8  # images per row; more draws wrap onto further row pairs


def _show_input(ax, image: torch.Tensor, lo: float, hi: float) -> None:
    img = ((image.detach().cpu().float() - lo) / (hi - lo)).clamp(0, 1)
    if img.shape[0] == 3:
        ax.imshow(img.permute(1, 2, 0).numpy())  # (C, H, W) -> (H, W, C)
    else:
        ax.imshow(img.mean(0).numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def unit_gradient_grid(path: Path | str, gradients: torch.Tensor, inputs: torch.Tensor | None = None,
                       title: str | None = None, values: torch.Tensor | None = None,
                       value_range: tuple[float, float] | None = None, cell: float = 1.1) -> Path:
    """Save the ``n`` gradients ``(n, C, H, W)`` (or ``(n, H, W)``) as a grid, atomically.

    With ``inputs`` (same shape), each gradient sits below its noise image (scaled from
    ``value_range``, default their min..max). ``values`` ``(n,)``: the unit's value on each draw,
    written under its gradient. The format follows ``path``'s suffix. Returns ``path``.
    """
    grads = gradients.detach().cpu().float()
    grads = grads.unsqueeze(1) if grads.dim() == 3 else grads
    if grads.dim() != 4:
        raise ValueError(f"gradients must be (n, C, H, W) or (n, H, W), got {tuple(gradients.shape)}")
    heat = grads.sum(1)  # channel sum: one signed map per draw
    n = heat.shape[0]
    limit = float(heat.abs().max()) or 1.0
    cols = min(n, COLUMNS)
    blocks = math.ceil(n / cols)
    per_block = 2 if inputs is not None else 1
    if inputs is not None:
        shown = inputs.detach().cpu().float()
        shown = shown.unsqueeze(1) if shown.dim() == 3 else shown
        lo, hi = value_range if value_range is not None else (float(shown.min()), float(shown.max()))
        hi = hi if hi > lo else lo + 1.0
    fig, axes = plt.subplots(blocks * per_block, cols,
                             figsize=(cols * cell, blocks * per_block * cell + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        row, col = divmod(i, cols)
        if inputs is not None:
            ax = axes[row * per_block, col]
            ax.axis("on")
            _show_input(ax, shown[i], lo, hi)
            if i == 0:
                ax.set_ylabel("noise", fontsize=7)
        ax = axes[row * per_block + per_block - 1, col]
        ax.axis("on")
        show_signed(ax, heat[i], vmax=limit)
        if values is not None:
            ax.set_xlabel(f"u = {float(values[i]):.3g}", fontsize=6, **LITERAL)
        if i == 0:
            ax.set_ylabel("gradient", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8, **LITERAL)
    return save(fig, path)
