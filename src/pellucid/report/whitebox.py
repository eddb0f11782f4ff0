"""Report sections of the white-box network: its layers and "how the model sees" an input."""

from __future__ import annotations

from pathlib import Path

import torch

from pellucid.data.datasets import ImageDataset
from pellucid.models.whitebox import WhiteBoxNet
from pellucid.nn.semantic.twostep import TwoStep
from pellucid.report.html import Section
from pellucid.robust.evaluate import RobustnessResult
from pellucid.viz import whitebox


def whitebox_sections(run_dir: Path | str, model: WhiteBoxNet, test: ImageDataset,
                      result: RobustnessResult | None, *, n_examples: int = 8) -> list[Section]:
    """Figures of every layer; with ``result``, "how the model sees" its adversarial inputs
    (the ones the attack broke first)."""
    run_dir = Path(run_dir)
    twostep = whitebox.plot_twostep(TwoStep(), model.twostep, run_dir / "twostep.png")
    kernels = whitebox.plot_conv_kernels(model, run_dir / "conv_kernels.png")
    affine, affine_posed = whitebox.plot_affine_features(
        model, run_dir / "affine_features.png", run_dir / "affine_posed_features.png")
    sections = [
        Section("Layer 1: TwoStep", "", [(twostep, "TwoStep initial vs learned")]),
        Section("Layer 2: rotation-posed conv features", "", [(kernels, "2 kernels x 32 rotations")]),
        Section("Layer 3: affine features", "",
                [(affine, "8 base features"), (affine_posed, "all 256 posed features")]),
    ]
    if result is not None:
        wrong = result.adversarial_logits.argmax(1) != test.labels
        order = torch.cat([torch.nonzero(wrong).squeeze(1), torch.nonzero(~wrong).squeeze(1)])
        pick = order[:n_examples]
        sees = whitebox.plot_how_model_sees(
            model, result.adversarial[pick], test.labels[pick], list(test.classes),
            run_dir / "how_model_sees.png",
            f"How the model sees adversarial test images ({result.attack}, eps {result.eps})")
        sections.append(Section(
            "How the model sees", "Rows: adversarial input with class probabilities; TwoStep "
            "output; conv output; for each class, its best affine feature in its best pose "
            "(colour) over the conv output (grey), with the match value.",
            [(sees, "How the model sees")]))
    return sections
