"""Figures as pixel arrays for the page, drawn without pyplot's global state.

Several users' requests run at once in the server's threads; ``matplotlib.pyplot`` keeps one
global list of figures and is not safe to use from several threads. Every figure here is a
``matplotlib.figure.Figure`` with its own Agg canvas, rendered to an ``(H, W, 3)`` uint8 array and
dropped. Colours and conventions follow :mod:`pellucid.viz.style` (white = 0 on signed maps).
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pellucid.viz.style import DIVERGING

__all__ = ["figure", "render", "signed_rgb", "unit_rgb"]


def figure(width: float, height: float) -> Figure:
    """A new figure (inches) with its own canvas."""
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def render(fig: Figure, tight: bool = True) -> np.ndarray:
    """``fig`` as an ``(H, W, 3)`` uint8 array; ``tight``: lay it out with ``tight_layout`` first."""
    if tight:
        fig.tight_layout()
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def signed_rgb(heat: torch.Tensor, limit: float | None = None) -> np.ndarray:
    """A signed ``(H, W)`` map as an RGB image: white = 0, red > 0, blue < 0, scaled by ``limit``
    (default: its largest absolute value)."""
    h = heat.detach().cpu().double()
    lim = float(h.abs().max()) if limit is None else float(limit)
    lim = lim if lim > 0 else 1.0
    rgba = colormaps[DIVERGING](((h / lim).clamp(-1, 1).numpy() + 1) / 2)
    return (rgba[..., :3] * 255 + 0.5).astype(np.uint8)


def unit_rgb(image: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` in [0, 1] as an ``(H, W, 3)`` uint8 image (grey copied to R, G, B)."""
    img = image.detach().cpu().float().clamp(0, 1)
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    return (img.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
