"""Explanation grids: input | pullback | counterfactual | difference, one row per image (PNG).

- input, counterfactual: the images as they are (values in [0, 1]);
- pullback: the channel-summed attribution as a signed heatmap centred at 0 (white = 0, each
  image scaled by its own 99.5th percentile of |value|, so a few extreme pixels do not wash it out);
- difference ``counterfactual - input``: per-image min-max scaled to [0, 1] (the paper's display).

Titles and labels are drawn literally (no mathtext, no TeX): file names and class labels may hold
``$``, ``\\`` or ``^``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from pellucid.viz.style import plt, save, show_signed

__all__ = ["explanation_grid", "minmax_per_image", "signed_map"]


def minmax_per_image(x: torch.Tensor) -> torch.Tensor:
    """``(x - min_b) / (max_b - min_b)`` per sample ``b`` (constant images map to 0.5)."""
    flat = x.detach().flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    span = hi - lo
    scaled = torch.where(span > 0, (flat - lo) / span.clamp_min(1e-30), torch.full_like(flat, 0.5))
    return scaled.view_as(x)


def signed_map(attribution: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, H, W)``: channel sum, signed (shown centred at 0)."""
    return attribution.detach().sum(1)


# keyword arguments for text that comes from data (file names, labels): drawn as given
LITERAL = {"parse_math": False, "usetex": False}


def _show_image(ax, image: torch.Tensor, title: str | None) -> None:
    img = image.detach().cpu().float().clamp(0, 1)
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img.permute(1, 2, 0).numpy())  # (C, H, W) -> (H, W, C)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8, **LITERAL)


def _show_heat(ax, heat: torch.Tensor, vmax: float | None, title: str | None) -> None:
    show_signed(ax, heat, vmax=vmax)
    if title:
        ax.set_title(title, fontsize=7, **LITERAL)


def explanation_grid(path: Path | str, inputs: torch.Tensor, pullback: torch.Tensor | None = None,
                     counterfactual: torch.Tensor | None = None, row_labels: Sequence[str] | None = None,
                     method: str = "pullback", cell: float = 2.0, title: str | None = None) -> Path:
    """Save the grid (one row per image) to ``path``, in the format its suffix names (.png, .pdf,
    .svg, ...); columns without data are left out; ``title`` goes above the grid. Returns ``path``."""
    columns = [("input", lambda b, ax, t: _show_image(ax, inputs[b], t))]
    if pullback is not None:
        heat = signed_map(pullback).cpu().float()
        limits = heat.flatten(1).abs().quantile(0.995, dim=1)
        columns.append((method, lambda b, ax, t: _show_heat(ax, heat[b], float(limits[b]) or None, t)))
    if counterfactual is not None:
        diff = minmax_per_image(counterfactual - inputs)
        columns.append(("counterfactual", lambda b, ax, t: _show_image(ax, counterfactual[b], t)))
        columns.append(("difference (min-max)", lambda b, ax, t: _show_image(ax, diff[b], t)))
    rows = inputs.shape[0]
    fig, axes = plt.subplots(rows, len(columns), figsize=(len(columns) * cell, rows * cell + 0.2),
                             squeeze=False)
    for b in range(rows):
        for c, (name, draw) in enumerate(columns):
            draw(b, axes[b, c], name if b == 0 else None)
        if row_labels is not None:
            axes[b, 0].set_ylabel(row_labels[b], fontsize=8, **LITERAL)
    if title:
        fig.suptitle(title, fontsize=9, **LITERAL)
    return save(fig, path)


def bench_figure(rows: Sequence[dict], path: Path | str, title: str | None = None) -> Path:
    """The explain-bench table as a figure: methods x metrics, each cell the mean score, coloured
    by its rank within the metric's column (dark: best, taking each metric's direction into
    account; grey: no valid score)."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    cell = {(r["method"], r["metric"]): r for r in rows}
    values = torch.full((len(methods), len(metrics)), float("nan"), dtype=torch.float64)
    for (i, m), (j, k) in ((im, jk) for im in enumerate(methods) for jk in enumerate(metrics)):
        r = cell.get((m, k))
        if r is not None and r["mean"] is not None:
            values[i, j] = r["mean"] if r["higher_is_better"] else -r["mean"]
    # rank within each column: 1 = best; NaN cells stay NaN
    ranks = torch.full_like(values, float("nan"))
    for j in range(len(metrics)):  # one column per metric: a handful of columns
        col = values[:, j]
        ok = ~torch.isnan(col)
        order = (-col[ok]).argsort().argsort().double()
        ranks[ok, j] = 1 - order / max(int(ok.sum()) - 1, 1)
    fig, ax = plt.subplots(figsize=(1.1 * len(metrics) + 2.5, 0.42 * len(methods) + 1.6))
    ax.imshow(ranks.numpy(), cmap="Greens", vmin=-0.2, vmax=1.1, aspect="auto")
    for i, m in enumerate(methods):
        for j, k in enumerate(metrics):
            r = cell.get((m, k))
            text = "-" if r is None or r["mean"] is None else f"{r['mean']:.3g}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(metrics)), [k.replace("_", " ") for k in metrics], rotation=35,
                  ha="right", fontsize=7)
    ax.set_yticks(range(len(methods)), methods, fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return save(fig, path)
