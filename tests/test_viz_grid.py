"""The image grid of the reports: one coloured canvas, checked against a loop that places every
pixel by hand, and the figure it is drawn in."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import matplotlib.pyplot as plt
import pytest
import torch

from pellucid.viz.style import DIVERGING, grid_canvas, image_grid


def reference_canvas(images: torch.Tensor, rows: int, cols: int, gap_x: int, gap_y: int) -> torch.Tensor:
    n, h, w = images.shape
    out = torch.ones(rows * (gap_y + h) + gap_x // 2, cols * (gap_x + w), 4, dtype=torch.float64)
    cmap = plt.get_cmap(DIVERGING)
    for i in range(n):
        m = float(images[i].abs().max()) or 1.0
        top, left = (i // cols) * (gap_y + h) + gap_y, (i % cols) * (gap_x + w) + gap_x // 2
        for yy in range(h):
            for xx in range(w):
                out[top + yy, left + xx] = torch.tensor(cmap((float(images[i, yy, xx]) / m + 1) / 2))
    return out


@pytest.mark.parametrize("rows,cols,n,gap_x,gap_y", [(2, 3, 5, 2, 5), (1, 4, 4, 3, 3), (3, 1, 2, 4, 2)])
def test_grid_canvas_places_every_image_where_the_loop_does(rows, cols, n, gap_x, gap_y):
    g = torch.Generator().manual_seed(rows * 10 + cols)
    images = torch.randn(n, 5, 4, generator=g)
    images[0] = 0.0  # all zero: white, not NaN
    canvas, corners = grid_canvas(images, rows, cols, gap_x, gap_y)
    want = reference_canvas(images, rows, cols, gap_x, gap_y)
    assert canvas.shape == want.shape
    assert torch.allclose(canvas.double(), want, atol=1e-12)
    zero = canvas[:, :, :3][corners[0, 1]:corners[0, 1] + 5, corners[0, 0]:corners[0, 0] + 4]
    assert torch.allclose(zero, torch.ones_like(zero), atol=0.005)  # the colormap's middle entry
    for i, (x, y) in enumerate(corners.tolist()):
        assert (y - gap_y) // (gap_y + 5) == i // cols and (x - gap_x // 2) // (gap_x + 4) == i % cols


def test_image_grid_draws_the_canvas_with_labels_and_refuses_too_many_images(tmp_path):
    images = torch.stack([torch.ones(6, 6), -torch.ones(6, 6), torch.zeros(6, 6)])
    path = image_grid(images, 1, 3, tmp_path / "grid.png", "three", ["plus", "minus", ""], cell=1.0)
    pixels = matplotlib.image.imread(path)  # (H, W, 4) in [0, 1]
    height, width = pixels.shape[:2]
    assert width == 330  # 3 cells of 1 inch at 110 dpi
    middle = pixels[int(height * 0.75)]  # a row through the images (the title and labels above)
    thirds = [middle[int(width * (k + 0.5) / 3), :3] for k in range(3)]
    assert thirds[0][0] > 0.9 and thirds[0][2] < 0.1  # +1: red
    assert thirds[1][2] > 0.9 and thirds[1][0] < 0.1  # -1: blue
    assert (thirds[2] > 0.95).all()  # 0: white
    with pytest.raises(ValueError, match="do not fit"):
        image_grid(torch.zeros(5, 3, 3), 2, 2, tmp_path / "x.png", None)
    assert not (tmp_path / "x.png").exists()


def test_overlay_colours_compose_as_matplotlib_draws_two_images_with_alpha():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from pellucid.viz.style import overlay_colours

    g = torch.Generator().manual_seed(4)
    back, front = torch.rand(12, 10, generator=g) * 3 - 1, torch.randn(12, 10, generator=g)
    ours = overlay_colours(back, front, alpha=0.6)[0, :, :, :3].numpy()
    fig = Figure(figsize=(10 / 100, 12 / 100), dpi=100)  # one screen pixel per image pixel
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    ax.imshow(back.numpy(), cmap="Greys", interpolation="nearest")
    lim = float(front.abs().max())
    ax.imshow(front.numpy(), cmap=DIVERGING, vmin=-lim, vmax=lim, alpha=0.6, interpolation="nearest")
    canvas.draw()
    drawn = np.asarray(canvas.buffer_rgba())[..., :3] / 255
    assert drawn.shape == ours.shape
    assert abs(drawn - ours).max() < 3 / 255  # 8-bit rounding of each layer


def test_how_the_model_sees_is_one_tiled_picture_with_a_row_per_stage_and_class(tmp_path, authors_model):
    from pellucid.viz.whitebox import plot_how_model_sees

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 28, 28, generator=g)
    path = plot_how_model_sees(authors_model, x, torch.tensor([0, 1, 0]), ["3", "5"], tmp_path / "sees.png", "t")
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[1] == round(3 * 1.25 * 110)  # 3 columns of 1.25 inch at 110 dpi
    # 5 rows (input, TwoStep, conv, one per class) of 1.25-inch images and their labels
    assert 5 * 1.25 * 110 < pixels.shape[0] < 5 * 2.0 * 110
