"""Path stability during training, and whether pullback faithfulness grows with it.

The excitation-pullback paper's hypothesis: a ReLU network's activation paths (which gates are
open, which window of each max pool wins) stabilise during training, and this is why pullbacks
(gradients through soft gates along those paths) are faithful. For each model this trains the
registered recipe (shared trainer, its defaults, ``--epochs`` epochs) and after every epoch, on a
fixed probe set of ``--probe`` test images:

* records the activation patterns (:mod:`pellucid.explain.paths`: every ReLU-like site, max pool
  and, for the white-box network, its best poses) and reports the Hamming stability ``S(P_e,
  P_{e-1})`` and ``S(P_e, P_final)``;
* scores the pullback (tau 0.3) and the plain gradient of each probe image's label by
  faithfulness correlation (``pellucid.explain.metrics.faithfulness_correlation``: 64 random
  subsets of 56 pixels set to 0, seed 0; in [-1, 1], higher is more faithful). A correlation, not
  infidelity, because it does not grow with the scale of the logits, which changes from epoch to
  epoch.

Reports per model the Spearman correlation, over epochs 2..E, between ``S(P_e, P_{e-1})`` and the
pullback's faithfulness (positive: faithfulness grows with stability), and writes a figure
(``--figure``). Prints ONE JSON line.

``.venv/bin/python -m benchmarks path_stability [--models lenet-mnist35 whitebox-mnist35]
[--epochs 8] [--figure docs/img/path_stability.png]``
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # python benchmarks/NAME.py

from benchmarks import _harness as h  # noqa: E402

SUMMARY = "Activation-path stability during training, and whether pullback faithfulness grows with it"
EXPECTED_TIME = ("~14 min: 839 s with the defaults (168 s lenet-mnist35, 672 s whitebox-mnist35; "
                 "results/path_stability.jsonl)")


def faithfulness(method: str, labels, log: list[float]):
    """``measure(model, probe)``: mean faithfulness correlation of ``method`` on the probe's
    labels (images where it is undefined, a constant row, left out)."""
    from pellucid.explain import create_explainer
    from pellucid.explain.metrics import faithfulness_correlation

    def measure(model, probe) -> float:
        attributions = create_explainer(method, model).attribute(probe, target=labels)
        score = float(faithfulness_correlation(model, probe, attributions, labels, subset_size=56,
                                               n_draws=64, baseline=0.0, seed=0).nanmean())
        log.append(score)
        return score

    return measure


def run_model(name: str, epochs: int, probe_size: int) -> dict:
    import torch

    from pellucid.data import load_dataset
    from pellucid.explain.metrics import spearman
    from pellucid.explain.paths import PathStabilityTracker
    from pellucid.models.registry import MODELS
    from pellucid.train import RECIPES
    from pellucid.train.recipes import train_registered_classifier

    spec = MODELS.get(name)
    test = load_dataset(spec.dataset, "test", classes=spec.classes)
    probe, labels = test.images[:probe_size], test.labels[:probe_size]
    gradient_log: list[float] = []
    pullback = faithfulness("pullback", labels, [])
    gradient = faithfulness("gradient", labels, gradient_log)

    def measure(model, x):
        gradient(model, x)
        return pullback(model, x)

    tracker = PathStabilityTracker(probe, measure=measure)
    cfg = replace(RECIPES.get(name).config_type(), epochs=epochs)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = train_registered_classifier(name, cfg, Path(out) / "run", progress=False,
                                             on_epoch=tracker)
    rows = tracker.summary()
    for row, g in zip(rows, gradient_log):
        row["pullback_faithfulness"] = row.pop("measure")
        row["gradient_faithfulness"] = g
    stab = torch.tensor([r["stability_prev"] for r in rows[1:]], dtype=torch.float64)
    faith = torch.tensor([r["pullback_faithfulness"] for r in rows[1:]], dtype=torch.float64)
    return {"model": name, "epochs": epochs, "probe": probe_size,
            "pattern_bits_per_image": tracker.patterns[-1].n_bits // probe_size,
            "sites": tracker.patterns[-1].sites,
            "final_val_accuracy": result["epochs"][-1].get("val_accuracy"),
            "per_epoch": rows,
            "spearman_stability_vs_pullback_faithfulness":
                float(spearman(stab[None], faith[None])[0]) if len(stab) > 2 else None,
            "seconds": round(time.perf_counter() - t0, 1)}


def figure(results: list[dict], path: Path) -> None:
    from pellucid.viz.style import save
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for r in results:
        epochs = [row["epoch"] for row in r["per_epoch"]]
        axes[0].plot(epochs[1:], [row["stability_prev"] for row in r["per_epoch"][1:]], marker="o",
                     label=r["model"])
        axes[1].plot(epochs, [row["pullback_faithfulness"] for row in r["per_epoch"]], marker="o",
                     label=f"{r['model']} pullback")
        axes[1].plot(epochs, [row["gradient_faithfulness"] for row in r["per_epoch"]], ls="--",
                     label=f"{r['model']} gradient")
    axes[0].set(xlabel="epoch", ylabel="S(P_e, P_e-1)", title="activation-path stability")
    axes[1].set(xlabel="epoch", ylabel="faithfulness correlation", title="faithfulness on the probe set")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, path)


def parser():
    p = h.parser(__name__, __doc__, threads=2)
    p.add_argument("--models", nargs="+", default=["lenet-mnist35", "whitebox-mnist35"])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--probe", type=int, default=128)
    p.add_argument("--figure", type=Path, default=None)
    return p


def main(argv: list[str] | None = None) -> dict:
    args = h.parse(parser(), argv)
    results = [run_model(name, args.epochs, args.probe) for name in args.models]
    if args.figure is not None:
        figure(results, args.figure)
    return {"results": results}


if __name__ == "__main__":
    h.script(__name__)
