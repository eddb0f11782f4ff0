"""Shared figure conventions: headless backend, diverging colormap centred at 0, saving."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pellucid._io import save_bytes_atomic  # noqa: E402

DIVERGING = "bwr"


def show_signed(ax, image: torch.Tensor, vmax: float | None = None, title: str | None = None,
                title_size: float = 7):
    """``imshow`` with a diverging colormap symmetric about 0 (white = 0)."""
    img = image.detach().cpu().float().squeeze()
    lim = float(img.abs().max()) if vmax is None else vmax
    lim = lim if lim > 0 else 1.0
    handle = ax.imshow(img.numpy(), cmap=DIVERGING, vmin=-lim, vmax=lim)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=title_size)
    return handle


def image_grid(images: torch.Tensor, rows: int, cols: int, path: Path, title: str | None,
               labels: list[str] | None = None, cell: float = 0.8, label_size: float = 7):
    """Save ``rows * cols`` images (``(N, H, W)``) on a grid, each centred at 0 by its own scale.

    ``title``: the figure's title (``None``: none, e.g. where a report's heading says it);
    ``labels``: one title per image (empty: none), ``label_size`` points."""
    fig, axes = plt.subplots(rows, cols, figsize=(cols * cell, rows * cell + (0.4 if title else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < len(images):
            show_signed(ax, images[i], title=labels[i] if labels else None, title_size=label_size)
        else:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return save(fig, path)


def save(fig, path: Path | str) -> Path:
    """Save ``fig`` as ``path`` atomically (a killed process never leaves half a figure)."""
    path = Path(path)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=110, format=path.suffix.lstrip(".").lower() or "png")
    plt.close(fig)
    save_bytes_atomic(path, buffer.getvalue())
    return path
