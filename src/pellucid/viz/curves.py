"""Reliability, learning and accuracy-vs-eps curves."""

from __future__ import annotations

from pathlib import Path

from pellucid.robust.reliability import ReliabilityCurve
from pellucid.viz.style import plt, save


def plot_reliability(curves: dict[str, ReliabilityCurve], path: Path | str,
                     title: str | None = "Reliability curve") -> Path:
    """Precision-recall of correctness per attack; recall 1 sits at the accuracy. ``title``:
    ``None`` for none (e.g. under a report heading that says it)."""
    fig, ax = plt.subplots(figsize=(4.2, 3.4))
    for name, c in curves.items():
        ax.step(c.recall.numpy(), c.precision.numpy(), where="post",
                label=f"{name} (P@R0.8 {c.precision_at_recall(0.8):.3f}, AP {c.average_precision:.3f})")
    ax.axvline(0.8, color="grey", lw=0.6, ls=":")
    ax.set(xlabel="recall (correct answers kept)", ylabel="precision", title=title or "",
           xlim=(0, 1.01), ylim=(min(0.5, *(float(c.precision.min()) for c in curves.values())), 1.01))
    ax.legend(fontsize=6, loc="lower left")
    return save(fig, path)


def plot_learning_curve(history: list[dict], path: Path | str, title: str | None = "Learning curve") -> Path:
    """Train and validation accuracy per epoch; ``title``: ``None`` for none."""
    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(4.2, 3.4))
    for key, label in (("train_accuracy", "train (clean)"), ("val_accuracy", "validation (clean)"),
                       ("val_pgd_accuracy", "validation (PGD-10)")):
        if all(key in r for r in history):
            ax.plot(epochs, [r[key] for r in history], marker="o", ms=3, label=label)
    ax.set(xlabel="epoch", ylabel="accuracy", title=title or "")
    ax.legend(fontsize=7)
    return save(fig, path)


def plot_accuracy_vs_eps(points: list[dict], path: Path | str, title: str | None) -> Path:
    """Robust accuracy per eps of ``points`` (``[{"eps", "robust_accuracy"}]``); ``title``:
    ``None`` for none."""
    fig, ax = plt.subplots(figsize=(4.2, 3.4))
    ax.plot([p["eps"] for p in points], [p["robust_accuracy"] for p in points], marker="o", ms=3)
    ax.set(xlabel="eps (L-inf)", ylabel="robust accuracy", title=title or "", ylim=(0, 1.01))
    ax.grid(alpha=0.3)
    return save(fig, path)
