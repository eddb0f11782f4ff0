"""Shared figure conventions: headless backend, diverging colormap centred at 0, saving."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.collections import PatchCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
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


def signed_colours(images: torch.Tensor, vmax: float | None = None) -> torch.Tensor:
    """``(N, H, W)`` images as ``(N, H, W, 4)`` RGBA on the diverging colormap, as
    :func:`show_signed` draws them: ``[-m_i, m_i]`` onto the colormap, 0 white, ``m_i`` the image's
    largest magnitude (1 if it is all 0) or ``vmax``."""
    imgs = images.detach().cpu().float().reshape(-1, *images.shape[-2:])
    if vmax is None:
        lim = imgs.abs().flatten(1).amax(1)
        lim = torch.where(lim > 0, lim, torch.ones_like(lim))
    else:
        lim = torch.full((len(imgs),), float(vmax) if vmax > 0 else 1.0)
    return torch.from_numpy(colormaps[DIVERGING](((imgs / lim[:, None, None] + 1) / 2).numpy()))


def overlay_colours(background: torch.Tensor, signed: torch.Tensor, alpha: float = 0.6) -> torch.Tensor:
    """``signed`` (:func:`signed_colours`) drawn with opacity ``alpha`` over ``background`` on the
    ``Greys`` colormap (each image from its own minimum to maximum), as two ``imshow`` calls with
    ``alpha`` on the second compose them: ``(N, H, W)`` each, ``(N, H, W, 4)`` RGBA out."""
    back = background.detach().cpu().float().reshape(-1, *background.shape[-2:])
    low = back.flatten(1).amin(1)[:, None, None]
    span = back.flatten(1).amax(1)[:, None, None] - low
    grey = torch.from_numpy(colormaps["Greys"](((back - low) / torch.where(span > 0, span, 1)).numpy()))
    return alpha * signed_colours(signed) + (1 - alpha) * grey


def tile_canvas(cells: torch.Tensor, rows: int, cols: int, gap_x: int, gap_y: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """RGBA images ``(N, H, W, 4)`` tiled row by row: a canvas and the ``(column, row)`` pixel of
    each image's top-left corner, ``(N, 2)``.

    Each cell is ``gap_y`` white rows above the image (room for a label) and ``gap_x`` white
    columns split around it; cells without an image, and ``gap_x // 2`` rows below the grid, are
    white."""
    n, h, w = cells.shape[:3]
    if n > rows * cols:
        raise ValueError(f"{n} images do not fit a {rows} x {cols} grid")
    out = torch.ones(rows * cols, gap_y + h, gap_x + w, 4, dtype=cells.dtype)
    out[:n, gap_y:, gap_x // 2:gap_x // 2 + w] = cells
    canvas = out.view(rows, cols, gap_y + h, gap_x + w, 4).permute(0, 2, 1, 3, 4) \
        .reshape(rows * (gap_y + h), cols * (gap_x + w), 4)
    canvas = torch.cat([canvas, torch.ones(gap_x // 2, *canvas.shape[1:], dtype=canvas.dtype)])
    index = torch.arange(n)
    corners = torch.stack([index % cols * (gap_x + w) + gap_x // 2, index // cols * (gap_y + h) + gap_y], 1)
    return canvas, corners


def grid_canvas(images: torch.Tensor, rows: int, cols: int, gap_x: int, gap_y: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The images ``(N, H, W)`` coloured (:func:`signed_colours`) and tiled (:func:`tile_canvas`)."""
    return tile_canvas(signed_colours(images), rows, cols, gap_x, gap_y)


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
    return tile_grid(signed_colours(images), rows, cols, path, title, labels, cell, label_size)


def tile_grid(cells: torch.Tensor, rows: int, cols: int, path: Path, title: str | None,
              labels: list[str] | None = None, cell: float = 0.8, label_size: float = 7):
    """Save RGBA images ``(N, H, W, 4)`` on a framed grid in one Axes (:func:`tile_figure`)."""
    return save(tile_figure(cells, rows, cols, title, labels, cell, label_size), path, tight=False)


def tile_figure(cells: torch.Tensor, rows: int, cols: int, title: str | None,
                labels: list[str] | None = None, cell: float = 0.8, label_size: float = 7) -> Figure:
    """RGBA images ``(N, H, W, 4)`` on a framed grid in one Axes (see :func:`image_grid`), ``cell``
    inches wide each; ``labels`` may have several lines (the room above every cell fits the
    longest). A figure of its own, outside pyplot's global state: safe in any thread."""
    h, w = cells.shape[1:3]
    gap_x = max(2, round(w * 0.25))
    px_per_inch = (w + gap_x) / cell  # image pixels per inch of the figure
    lines = max((label.count("\n") + 1 for label in labels or [] if label), default=0)
    gap_y = gap_x + round((0.35 + 1.25 * lines) * label_size / 72 * px_per_inch) if lines else gap_x
    canvas, corners = tile_canvas(cells, rows, cols, gap_x, gap_y)
    width_in, grid_in = cols * cell, cell * canvas.shape[0] / (gap_x + w)
    title_in = 0.4 if title else 0.0
    fig = Figure(figsize=(width_in, grid_in + title_in + 0.05))
    FigureCanvasAgg(fig)
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
    return fig


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
