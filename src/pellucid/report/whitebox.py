"""Report sections of the white-box network: its layers and "how the model sees" an input.

The figures carry no titles of their own: each section's heading names the layer and the
caption says what the figure adds (counts, layout, learned values).
"""

from __future__ import annotations

from pathlib import Path

import torch

from pellucid.data.datasets import ImageDataset
from pellucid.models.whitebox import WhiteBoxNet
from pellucid.nn.semantic.twostep import TwoStep
from pellucid.report.html import Figure, Section, count, norm_label
from pellucid.robust.evaluate import RobustnessResult
from pellucid.viz import whitebox
from pellucid.viz.style import image_grid

# images per row of the pose grids: a whole row of 32 poses would shrink each to a thumbnail
_GRID_COLS = 16


def _levels(t: TwoStep) -> dict[str, str]:
    t0, t1 = float(t.t0), float(t.t1)
    return {"OFF": f"[0, {t0:.3f})", "MEH": f"[{t0:.3f}, {t1:.3f})", "ON": f"[{t1:.3f}, 1]"}


def _wrap(n: int) -> int:
    """Columns of a grid of ``n`` poses: rows of :data:`_GRID_COLS` when they divide evenly."""
    return _GRID_COLS if n % _GRID_COLS == 0 else n


@torch.no_grad()
def whitebox_sections(run_dir: Path | str, model: WhiteBoxNet, test: ImageDataset,
                      result: RobustnessResult | None, *, n_examples: int = 8) -> list[Section]:
    """Figures of every layer; with ``result``, "how the model sees" its adversarial inputs
    (the ones the attack broke first)."""
    run_dir = Path(run_dir)
    initial = TwoStep()
    twostep = whitebox.plot_twostep(initial, model.twostep, run_dir / "twostep.png", titled=False)
    before, after = _levels(initial), _levels(model.twostep)
    levels = [{"level": k, "initial": before[k], "learned": after[k]} for k in before]

    kernels = whitebox.plot_conv_kernels(model, run_dir / "conv_kernels.png", titled=False)
    n_rot = model.conv.angles.numel()
    n_kernels = model.conv.posed_weights().shape[1] // n_rot

    base = model.affine.padded_features()  # (F, H, W)
    posed = model.affine.posed_weights()  # (F, P, H, W)
    n_feat, n_pose = posed.shape[:2]
    names = list(test.classes)
    block = n_feat // model.logical.n_classes  # block c of the features votes for class c
    affine = image_grid(base, 1, n_feat, run_dir / "affine_features.png", None,
                        [f"feature {f} (class {names[f // block]})" for f in range(n_feat)], cell=1.3,
                        label_size=8)
    cols = _wrap(n_pose)
    affine_posed = image_grid(posed.flatten(0, 1), n_feat * n_pose // cols, cols,
                              run_dir / "affine_posed_features.png", None, cell=1.0)
    sections = [
        Section("Layer 1: TwoStep", "Each pixel value x in [0, 1] is squashed to about [-1, 1]: "
                "OFF pixels to about -1, ON pixels to about +1, MEH ones in between.",
                [Figure(twostep, "Initial (dashed) and learned (solid) squashing; dotted lines at the "
                                 "learned thresholds.")], table=levels, table_beside=True),
        Section("Layer 2: rotation-posed conv features", "",
                [Figure(kernels, f"{count(n_kernels * n_rot)} posed kernels: {n_kernels} kernels x "
                                 f"{n_rot} rotations of {360 / n_rot:g} degrees, each kernel's rotations "
                                 f"over rows of {_wrap(n_rot)} (bwr, each kernel centred at 0 on its own "
                                 "scale). Click a figure to enlarge it.")]),
        Section("Layer 3: affine features", "",
                [Figure(affine, f"The {n_feat} base features, {block} per class."),
                 Figure(affine_posed, f"All {count(n_feat * n_pose)} posed features: each base "
                                      f"feature under its {n_pose} learned affine poses, in "
                                      f"{n_pose // cols} rows of {cols} (feature 0 in the first "
                                      f"{n_pose // cols}, feature 1 in the next, ...).",
                        wide=True)]),
    ]
    if result is not None:
        wrong = result.adversarial_logits.argmax(1).cpu() != test.labels
        order = torch.cat([torch.nonzero(wrong).squeeze(1), torch.nonzero(~wrong).squeeze(1)])
        pick = order[:n_examples]
        n_wrong = min(int(wrong.sum()), len(pick))
        chosen = (f"the first {len(pick)} it misclassifies" if n_wrong == len(pick) else
                  f"the {n_wrong} it misclassifies, then the first {len(pick) - n_wrong} it "
                  "still classifies correctly")
        sees = whitebox.plot_how_model_sees(
            model, result.adversarial[pick], test.labels[pick], names,
            run_dir / "how_model_sees.png", None)
        sections.append(Section(
            "How the model sees", "Rows: adversarial input with its two likeliest classes' probabilities; TwoStep "
            "output; conv output; for each class, its best affine feature in its best pose "
            "(colour) over the conv output (grey), with the match value.",
            [Figure(sees, f"Adversarial test images ({result.attack}, {norm_label(result.norm)} eps "
                          f"{result.eps:g}): {chosen}.", n=len(pick), n_of="adversarial test images")]))
    return sections
