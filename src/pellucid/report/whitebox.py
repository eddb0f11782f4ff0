"""The white-box run report: figures of a trained model and its robustness, in one HTML file."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pellucid.data.datasets import ImageDataset
from pellucid.models.whitebox import WhiteBoxNet
from pellucid.nn.twostep import TwoStep
from pellucid.report.html import Section, write_report
from pellucid.robust.evaluate import RobustnessResult, accuracy_vs_eps
from pellucid.viz import curves, whitebox


def whitebox_report(run_dir: Path | str, model: WhiteBoxNet, test: ImageDataset,
                    result: RobustnessResult, *, eps_curve_limit: int = 500,
                    n_examples: int = 8, seed: int = 0) -> Path:
    """Write figures (PNGs) into ``run_dir`` and ``run_dir/report.html`` embedding them all."""
    run_dir = Path(run_dir)
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
               if line.strip()] if (run_dir / "metrics.jsonl").is_file() else []
    s = result.summary()
    figs: dict[str, Path] = {}
    figs["reliability"] = curves.plot_reliability({f"{result.attack} eps={result.eps}": result.reliability},
                                                  run_dir / "reliability.png")
    if history:
        figs["learning"] = curves.plot_learning_curve(history, run_dir / "learning_curve.png")
    sub = test.subset(slice(0, min(eps_curve_limit, len(test))))
    eps_points = accuracy_vs_eps(model, sub.images, sub.labels, [0.0, 0.05, 0.1, 0.15, 0.2, 0.25,
                                                                  0.3, 0.35, 0.4], steps=40, seed=seed)
    figs["eps"] = curves.plot_accuracy_vs_eps(eps_points, run_dir / "accuracy_vs_eps.png",
                                              f"PGD-40 (step eps/3), first {len(sub)} test images")
    figs["twostep"] = whitebox.plot_twostep(TwoStep(), model.twostep, run_dir / "twostep.png")
    figs["kernels"] = whitebox.plot_conv_kernels(model, run_dir / "conv_kernels.png")
    figs["affine"], figs["affine_posed"] = whitebox.plot_affine_features(
        model, run_dir / "affine_features.png", run_dir / "affine_posed_features.png")
    # adversarial examples: the first few the attack broke, then others, for "how the model sees"
    adv_wrong = result.adversarial_logits.argmax(1) != test.labels
    order = torch.cat([torch.nonzero(adv_wrong).squeeze(1), torch.nonzero(~adv_wrong).squeeze(1)])
    pick = order[:n_examples]
    figs["sees"] = whitebox.plot_how_model_sees(
        model, result.adversarial[pick], test.labels[pick], list(test.classes),
        run_dir / "how_model_sees.png", f"How the model sees adversarial test images "
        f"({result.attack}, eps {result.eps})")
    sections = [
        Section("Robustness", f"{s['n']} test images; attack {result.attack} at L-inf eps {result.eps}"
                " with the true labels; robust = clean correct and adversarial correct.", table=[s]),
        Section("Reliability and learning", "Reliability: precision-recall of correctness on the "
                "adversarial inputs, scored by the max softmax probability.",
                [(figs["reliability"], "Reliability curve"),
                 *([(figs["learning"], "Learning curve")] if "learning" in figs else []),
                 (figs["eps"], "Accuracy vs eps")], table=[{"eps": p["eps"], "robust_accuracy":
                                                           p["robust_accuracy"]} for p in eps_points]),
        Section("Layer 1: TwoStep", "", [(figs["twostep"], "TwoStep initial vs learned")]),
        Section("Layer 2: rotation-posed conv features", "",
                [(figs["kernels"], "2 kernels x 32 rotations")]),
        Section("Layer 3: affine features", "",
                [(figs["affine"], "8 base features"), (figs["affine_posed"], "all 256 posed features")]),
        Section("How the model sees", "Rows: adversarial input with class probabilities; TwoStep "
                "output; conv output; for each class, its best affine feature in its best pose "
                "(colour) over the conv output (grey), with the match value.",
                [(figs["sees"], "How the model sees")]),
    ]
    if history:
        sections.append(Section("Training log", table=history))
    config_path = run_dir / "config.json"
    prov = {"config": json.loads(config_path.read_text())} if config_path.is_file() else {}
    return write_report(run_dir / "report.html", "pellucid: white-box network report", sections, prov)
