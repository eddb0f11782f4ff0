"""Figures of attacks: minimal perturbations that flip a prediction (the paper's Figure 5)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pellucid.robust.attacks import perturbation_norm
from pellucid.robust.evaluate import predict_logits
from pellucid.viz.style import plt, save, show_signed


def plot_minimal_perturbations(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                               labels: torch.Tensor, class_names: list[str], path: Path | str,
                               title: str | None, n: int = 8) -> Path:
    """Rows: clean input, adversarial input (with predicted class and probability), and the
    perturbation ``x_adv - x`` (bwr, centred at 0, titled with its L2 and L-inf norms); one
    column per example whose correct prediction was flipped (the first ``n``). ``title``: the
    figure's title (``None``: none)."""
    clean_p, adv_p = predict_logits(model, x).softmax(1), predict_logits(model, x_adv).softmax(1)
    flipped = torch.nonzero((clean_p.argmax(1) == labels) & (adv_p.argmax(1) != labels)).squeeze(1)[:n]
    cols = max(len(flipped), 1)
    fig, axes = plt.subplots(3, cols, figsize=(1.25 * cols + 0.3, 4.3), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    if not len(flipped):
        axes[0, 0].set_title("no prediction flipped", fontsize=8)
    for col, i in enumerate(flipped.tolist()):
        delta = x_adv[i] - x[i]
        c, a = int(clean_p[i].argmax()), int(adv_p[i].argmax())
        axes[0, col].imshow(x[i].squeeze().cpu().numpy(), cmap="gray", vmin=0, vmax=1)
        axes[0, col].set_title(f"{class_names[c]} {clean_p[i, c]:.2f}", fontsize=7)
        axes[1, col].imshow(x_adv[i].squeeze().cpu().numpy(), cmap="gray", vmin=0, vmax=1)
        axes[1, col].set_title(f"-> {class_names[a]} {adv_p[i, a]:.2f}", fontsize=7)
        show_signed(axes[2, col], delta, title=f"L2 {float(perturbation_norm(delta[None], 'l2')):.2f}"
                    f"\nL-inf {float(perturbation_norm(delta[None], 'linf')):.2f}")
    for row, name in enumerate(("clean", "adversarial", "perturbation")):
        axes[row, 0].set_ylabel(name, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    return save(fig, path)
