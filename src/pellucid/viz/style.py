"""Shared figure conventions: headless backend, diverging colormap centred at 0, saving."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import PatchCollection  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

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


def grid_canvas(images: torch.Tensor, rows: int, cols: int, gap_x: int, gap_y: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The images ``(N, H, W)`` coloured and tiled row by row: an RGBA canvas and the
    ``(column, row)`` pixel of each image's top-left corner, ``(N, 2)``.

    Image ``i`` maps ``[-m_i, m_i]`` (``m_i`` its largest magnitude, 1 if it is all 0) onto the
    diverging colormap, so 0 is white. Each cell is ``gap_y`` white rows above the image (room
    for a label) and ``gap_x`` white columns split around it; cells without an image, and
    ``gap_x // 2`` rows below the grid, are white."""
    imgs = images.detach().cpu().float().reshape(-1, *images.shape[-2:])
    n, h, w = imgs.shape
    if n > rows * cols:
        raise ValueError(f"{n} images do not fit a {rows} x {cols} grid")
    lim = imgs.abs().flatten(1).amax(1)
    lim = torch.where(lim > 0, lim, torch.ones_like(lim))
    coloured = torch.from_numpy(plt.get_cmap(DIVERGING)(((imgs / lim[:, None, None] + 1) / 2).numpy()))
    cells = torch.ones(rows * cols, gap_y + h, gap_x + w, 4, dtype=coloured.dtype)
    cells[:n, gap_y:, gap_x // 2:gap_x // 2 + w] = coloured
    canvas = cells.view(rows, cols, gap_y + h, gap_x + w, 4).permute(0, 2, 1, 3, 4) \
        .reshape(rows * (gap_y + h), cols * (gap_x + w), 4)
    canvas = torch.cat([canvas, torch.ones(gap_x // 2, *canvas.shape[1:], dtype=canvas.dtype)])
    index = torch.arange(n)
    corners = torch.stack([index % cols * (gap_x + w) + gap_x // 2, index // cols * (gap_y + h) + gap_y], 1)
    return canvas, corners


def image_grid(images: torch.Tensor, rows: int, cols: int, path: Path, title: str | None,
               labels: list[str] | None = None, cell: float = 0.8, label_size: float = 7):
    """Save ``rows * cols`` images (``(N, H, W)``) on a grid, each centred at 0 by its own scale.

    ``title``: the figure's title (``None``: none, e.g. where a report's heading says it);
    ``labels``: one title per image (empty: none), ``label_size`` points.

    The grid is one picture in one Axes: every image is coloured (``bwr``, ``-m .. m`` with ``m``
    its largest magnitude) and placed with a white gap, then drawn once with nearest-pixel
    interpolation (see :func:`grid_canvas`). One Axes per image, as ``plt.subplots`` gives, spends
    most of its time in matplotlib's Axes set-up and layout: the 3-vs-5 report's three grids (328
    images) took 6.8 s that way and take 1.2 s so (medians of 3, one process, one thread).
    """
    h, w = images.shape[-2:]
    gap_x = max(2, round(w * 0.25))
    px_per_inch = (w + gap_x) / cell  # image pixels per inch of the figure
    gap_y = gap_x + (round(label_size * 1.6 / 72 * px_per_inch) if labels else 0)
    canvas, corners = grid_canvas(images, rows, cols, gap_x, gap_y)
    width_in, grid_in = cols * cell, cell * canvas.shape[0] / (gap_x + w)
    title_in = 0.4 if title else 0.0
    fig = plt.figure(figsize=(width_in, grid_in + title_in + 0.05))
    ax = fig.add_axes((0.0, 0.0, 1.0, grid_in / (grid_in + title_in + 0.05)))
    ax.imshow(canvas.numpy(), interpolation="nearest", aspect="auto")
    ax.set_xlim(-0.5, canvas.shape[1] - 0.5)
    ax.set_ylim(canvas.shape[0] - 0.5, -0.5)
    ax.axis("off")
    x0, y0 = (corners[:, 0] - 0.5).tolist(), (corners[:, 1] - 0.5).tolist()  # pixel edges
    ax.add_collection(PatchCollection([Rectangle((x, y), w, h) for x, y in zip(x0, y0)],
                                      facecolor="none", edgecolor="black", linewidth=0.6, clip_on=False))
    for x, y, label in zip(x0, y0, labels or []):
        if label:
            ax.text(x + w / 2, y - 1, label, ha="center", va="bottom", fontsize=label_size)
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.1 / (grid_in + title_in + 0.05))
    return save(fig, path, tight=False)


def save(fig, path: Path | str, tight: bool = True) -> Path:
    """Save ``fig`` as ``path`` atomically (a killed process never leaves half a figure);
    ``tight``: lay it out with ``tight_layout`` first."""
    path = Path(path)
    if tight:
        fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=110, format=path.suffix.lstrip(".").lower() or "png")
    plt.close(fig)
    save_bytes_atomic(path, buffer.getvalue())
    return path
