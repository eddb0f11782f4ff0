"""Figures of the white-box network's parameters and of "how the model sees" an input."""

from __future__ import annotations

from pathlib import Path

import torch

from pellucid.models.whitebox import WhiteBoxNet
from pellucid.nn.semantic.twostep import TwoStep
from pellucid.viz.style import image_grid, overlay_colours, plt, save, signed_colours, tile_grid


@torch.no_grad()
def plot_twostep(initial: TwoStep, learned: TwoStep, path: Path | str, titled: bool = True) -> Path:
    """The TwoStep squashing over x in [0, 1], initial vs learned, with the learned thresholds
    (dotted); ``titled``: name the learned levels in the title."""
    x = torch.linspace(0, 1, 501)
    fig, ax = plt.subplots(figsize=(4.2, 3.4))
    ax.plot(x, initial(x), ls="--", label="initial")
    ax.plot(x, learned(x), label="learned")
    for t in (learned.t0, learned.t1):
        ax.axvline(float(t), color="grey", lw=0.6, ls=":")
    ax.set(xlabel="pixel value x", ylabel="TwoStep(x)")
    if titled:
        t0, t1 = float(learned.t0), float(learned.t1)
        ax.set_title(f"TwoStep, learned levels\nOFF [0, {t0:.3f}) MEH [{t0:.3f}, {t1:.3f}) ON [{t1:.3f}, 1]",
                     fontsize=9)
    ax.legend(fontsize=7)
    return save(fig, path)


@torch.no_grad()
def plot_conv_kernels(model: WhiteBoxNet, path: Path | str, titled: bool = True) -> Path:
    """Every posed conv kernel, each kernel's rotations over rows of 16; ``titled``: with a title
    that counts them."""
    posed = model.conv.posed_weights()[0]  # (K*P, k, k): kernel-major, then rotation
    n_rot = model.conv.angles.numel()
    cols = 16 if n_rot % 16 == 0 else n_rot  # wrap each kernel's rotations over rows of 16
    return image_grid(posed, len(posed) // cols, cols, path,
                      f"{len(posed)} posed conv kernels ({len(posed) // n_rot} kernels x {n_rot} "
                      f"rotations of {360 / n_rot:g} degrees)" if titled else None, cell=0.6)


@torch.no_grad()
def plot_affine_features(model: WhiteBoxNet, path: Path | str, posed_path: Path | str,
                         titled: bool = True) -> list[Path]:
    """The base affine features (``path``) and all their poses (``posed_path``, row = feature);
    ``titled``: each figure with its title."""
    base = model.affine.padded_features()  # (F, H, W)
    n_cls = model.logical.n_classes
    labels = [f"feature {f} (class block {f // (len(base) // n_cls)})" for f in range(len(base))]
    first = image_grid(base, 1, len(base), path, "Affine base features" if titled else None, labels, cell=1.3)
    posed = model.affine.posed_weights()  # (F, P, H, W)
    second = image_grid(posed.flatten(0, 1), posed.shape[0], posed.shape[1], posed_path,
                        f"All {posed.shape[0] * posed.shape[1]} posed affine features "
                        f"(row = feature, column = pose)" if titled else None, cell=0.45)
    return [first, second]


@torch.no_grad()
def plot_how_model_sees(model: WhiteBoxNet, x: torch.Tensor, labels: torch.Tensor,
                        class_names: list[str], path: Path | str, title: str | None) -> Path:
    """Columns = images; rows = input (+ the two likeliest classes' probabilities), TwoStep, conv,
    best affine feature per class.
    ``title``: the figure's title (``None``: none).

    The class rows show, for the class's block of affine features, the feature with the highest
    match in its best pose, overlaid (colour, 60 %) on the conv output (grey), titled with the
    match. One tiled picture (:func:`~pellucid.viz.style.tile_grid`): with one Axes per image the
    3-vs-5 report's 8 images took 1.3 s.
    """
    t = model.trace(x)
    posed = model.affine.posed_weights()  # (F, P, H, W)
    n, n_cls = len(x), model.logical.n_classes
    block = t["affine"].shape[1] // n_cls
    best = torch.stack([t["affine"][:, c * block:(c + 1) * block].argmax(1) + c * block
                        for c in range(n_cls)], 1)  # (N, C): each class's best feature per image
    pose = t["affine_pose"].gather(1, best)  # (N, C)
    conv = t["conv"][:, 0]
    if posed.shape[-2:] != conv.shape[-2:]:
        raise ValueError(f"affine features {tuple(posed.shape[-2:])} and conv output "
                         f"{tuple(conv.shape[-2:])} differ in size")
    h, w = conv.shape[-2:]

    def fit(img: torch.Tensor) -> torch.Tensor:  # input-sized rows, centred in conv-sized cells
        top, left = (h - img.shape[-2]) // 2, (w - img.shape[-1]) // 2
        return torch.nn.functional.pad(img, (left, w - img.shape[-1] - left, top, h - img.shape[-2] - top))

    overlays = [overlay_colours(conv, posed[best[:, c], pose[:, c]]) for c in range(n_cls)]
    rows = [signed_colours(fit(x[:, 0]), vmax=1.0), signed_colours(fit(t["twostep"][:, 0]), vmax=1.0),
            signed_colours(conv), *overlays]
    top = t["probs"].topk(min(n_cls, 2), dim=1).indices  # the two likeliest classes fit a cell's width
    probs = [" ".join(f"{class_names[c]}:{float(t['probs'][j, c]):.2f}" for c in top[j].tolist()) for j in range(n)]
    labels_ = ([f"true {class_names[int(labels[j])]}\n{probs[j]}" for j in range(n)] + ["TwoStep"] * n
               + ["conv"] * n + [f"class {class_names[c]}: f{int(best[j, c])} m={float(t['affine'][j, best[j, c]]):.2f}"
                                 for c in range(n_cls) for j in range(n)])
    return tile_grid(torch.cat(rows), len(rows), n, path, title, labels_, cell=1.25)
