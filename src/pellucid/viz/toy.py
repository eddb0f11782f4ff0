"""2-D pictures of metric neurons: one neuron's response over the plane, and the decision regions
of a small epsilon-softmax classifier with its rejection region ("Metric as Transform").

* :func:`two_moons`, :func:`circles`  toy datasets generated in torch (seeded).
* :func:`toy_layer`                   a ``(B, 2) -> (B, H)`` metric layer by name (:data:`TOY_DISTANCES`).
* :func:`dissimilarity`               that layer's "distance" ``d`` (larger = farther), for any kind.
* :class:`ToyClassifier`              ``a = softmax(-s [d_1..d_H, epsilon])``, ``logits = a [V; 0]``;
                                      rejects where the epsilon neuron wins (``min_j d_j > epsilon``).
* :func:`fit_toy`                     full-batch Adam, seeded, a few hundred steps (seconds).
* :func:`render_all`                  every figure of ``docs/metric.md`` (``metric-toy-*.png``).

Every quantity over the plane is one batched call on all grid points (:func:`plane_grid`).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pellucid._device import draw_device
from pellucid.models.metric import metric_layer
from pellucid.nn.metric.distance import ConvexDistance, CosineSimilarity, InputConvexDistance, LpDistance, StereoAngle
from pellucid.nn.metric.invex import InvexDistance
from pellucid.nn.metric.similarity import EpsilonSoftmax
from pellucid.train.optim import Adam
from pellucid.viz.style import plt, save

__all__ = ["TOY_DATA", "TOY_DISTANCES", "ToyClassifier", "circles", "dissimilarity", "fit_toy",
           "plane_grid", "plot_neurons", "plot_regions", "render_all", "toy_centres", "toy_layer",
           "two_moons"]

TOY_DISTANCES = ("l0.5", "l1", "l2", "l20", "stereo", "cosine", "convex", "invex", "linear")


# -- data ----------------------------------------------------------------------------------------

def two_moons(n: int = 300, noise: float = 0.1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two interleaved half circles, centred at the origin: ``x`` ``(n, 2)``, labels 0 / 1."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    t = torch.rand(n, generator=gen, device=draw_device(gen), dtype=torch.float32) * math.pi
    upper = torch.stack([t.cos(), t.sin()], 1)  # label 0
    lower = torch.stack([1 - t.cos(), 0.5 - t.sin()], 1)  # label 1
    x = torch.where(y[:, None] == 0, upper, lower) - torch.tensor([0.5, 0.25])
    return x + noise * torch.randn(n, 2, generator=gen, device=draw_device(gen), dtype=torch.float32), y


def circles(n: int = 300, noise: float = 0.08, factor: float = 0.45, seed: int = 0
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Two concentric circles (radii 1 and ``factor``): ``x`` ``(n, 2)``, label 1 = inner."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    t = torch.rand(n, generator=gen, device=draw_device(gen), dtype=torch.float32) * 2 * math.pi
    radius = torch.where(y == 1, factor, 1.0)
    x = radius[:, None] * torch.stack([t.cos(), t.sin()], 1)
    return x + noise * torch.randn(n, 2, generator=gen, device=draw_device(gen), dtype=torch.float32), y


TOY_DATA = {"moons": two_moons, "circles": circles}


# -- layers and their distances ----------------------------------------------------------------------

def toy_layer(name: str, hidden: int, inner_hidden: int = 32) -> nn.Module:
    """A 2-D metric layer of ``hidden`` neurons by name (``l<p>`` is built raw: ``variant='simple'``)."""
    return metric_layer(name, 2, hidden, variant="simple", inner_hidden=inner_hidden)


def dissimilarity(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    r"""``d`` ``(B, H)``, larger = farther from neuron ``j``'s centre:

    lp ``||x - c_j||_p``; cosine the angle to ``c_j``; stereo the angle on the sphere,
    ``arccos(y_j - b_j)``; convex ``f(x - c_j) e^t``; invex ``||g(x - c_j) - r|| e^t``; and for a
    linear neuron, which has no centre, ``-(w_j \cdot x + b_j)``.
    """
    if isinstance(layer, LpDistance):
        return layer.distances(x)
    if isinstance(layer, CosineSimilarity):
        return layer.angles(x)
    if isinstance(layer, StereoAngle):
        cosine = layer(x) - (layer.bias if layer.bias is not None else 0)
        return cosine.clamp(-1.0, 1.0).acos()
    if isinstance(layer, InvexDistance):
        return layer(x)
    if isinstance(layer, (ConvexDistance, InputConvexDistance, nn.Linear)):
        return -layer(x)
    raise TypeError(f"no toy distance for {type(layer).__name__}")


def toy_centres(layer: nn.Module) -> torch.Tensor | None:
    """Where each neuron's distance is smallest, ``(H, 2)``, or ``None`` (a linear neuron)."""
    if isinstance(layer, StereoAngle):  # the unit rows on S^2, projected back to the plane
        w = layer.unit_weight().detach()
        return w[:, :2] / (1 - w[:, 2:]).clamp_min(1e-6) / layer.log_input_scale.exp().detach()
    if isinstance(layer, InvexDistance):
        return layer.centres.detach() + layer.argmin_offset()
    centres = getattr(layer, "centres", None)
    return None if centres is None else centres.detach()


# -- the classifier ----------------------------------------------------------------------------------

class ToyClassifier(nn.Module):
    """``a = softmax(-s [d_1..d_H, epsilon])`` over the layer's distances, ``logits = a [V; 0]``:
    the epsilon neuron's value row is 0, and where it wins the input is rejected."""

    def __init__(self, name: str, hidden: int = 8, classes: int = 2, inner_hidden: int = 32) -> None:
        super().__init__()
        self.name = name
        self.layer = toy_layer(name, hidden, inner_hidden)
        self.values = nn.Parameter(torch.randn(hidden, classes) / hidden ** 0.5)  # (H, K)
        self.similarity = EpsilonSoftmax(None, mode="running")

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        return self.similarity(dissimilarity(self.layer, x))  # (B, H+1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activations(x)[:, :-1] @ self.values

    @torch.no_grad()
    def rejects(self, x: torch.Tensor) -> torch.Tensor:
        return self.similarity.rejects(dissimilarity(self.layer, x))


def fit_toy(name: str, x: torch.Tensor, y: torch.Tensor, *, hidden: int = 8, steps: int = 400,
            lr: float = 0.03, seed: int = 0) -> ToyClassifier:
    """Train a :class:`ToyClassifier` full-batch with Adam; centres start at ``hidden`` random
    training points (one-hot values), as the paper's data initialisation."""
    torch.manual_seed(seed)
    model = ToyClassifier(name, hidden, int(y.max()) + 1)
    rows = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed), device="cpu")[:hidden]
    with torch.no_grad():
        if hasattr(model.layer, "centres"):
            model.layer.centres.copy_(x[rows])
        model.values.copy_(F.one_hot(y[rows], model.values.shape[1]).float())
    optimizer = Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


# -- figures -------------------------------------------------------------------------------------------

def plane_grid(lim: float = 2.5, n: int = 160) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(n * n, 2)`` points of ``[-lim, lim]^2`` and the two ``(n, n)`` coordinate meshes."""
    axis = torch.linspace(-lim, lim, n)
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([gx.flatten(), gy.flatten()], 1), gx, gy


def _extent(lim: float) -> tuple[float, float, float, float]:
    return (-lim, lim, -lim, lim)


def _mark_centres(ax, layer: nn.Module, lim: float, first_only: bool = False) -> None:
    c = toy_centres(layer)
    if c is not None:
        c = c[:1] if first_only else c
        c = c[(c.abs() <= lim).all(1)]
        ax.scatter(c[:, 0], c[:, 1], marker="x", s=30 if first_only else 22,
                   c="white" if first_only else "black", linewidths=1.4)


def plot_neurons(models: dict[str, ToyClassifier], path: Path | str, lim: float = 2.5, n: int = 160) -> Path:
    """One panel per model: its first neuron's distance ``d_1`` over the plane (contours)."""
    points, gx, gy = plane_grid(lim, n)
    fig, axes = plt.subplots(3, math.ceil(len(models) / 3), figsize=(9, 9), squeeze=False)
    for ax, (name, model) in zip(axes.T.flat, models.items()):
        with torch.no_grad():
            d = dissimilarity(model.layer, points)[:, 0].view(n, n)  # (n, n), one batched call
        ax.imshow(d.numpy(), origin="lower", extent=_extent(lim), cmap="viridis")
        ax.contour(gx.numpy(), gy.numpy(), d.numpy(), levels=10, colors="white", linewidths=0.5)
        _mark_centres(ax, model.layer, lim, first_only=True)
        ax.set_title(f"{name}: one neuron's distance", fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
    for ax in list(axes.T.flat)[len(models):]:
        ax.axis("off")
    fig.suptitle("One trained neuron (moons) over the plane: its distance d_1, darker = nearer; x = its "
                 "centre", fontsize=10)
    return save(fig, path)


def plot_regions(models: dict[str, ToyClassifier], x: torch.Tensor, y: torch.Tensor, path: Path | str,
                 title: str, lim: float = 2.5, n: int = 160) -> Path:
    """One panel per model: predicted class over the plane, the rejection region shaded grey."""
    points, gx, gy = plane_grid(lim, n)
    fig, axes = plt.subplots(3, math.ceil(len(models) / 3), figsize=(9, 9), squeeze=False)
    for ax, (name, model) in zip(axes.T.flat, models.items()):
        with torch.no_grad():
            cls = model(points).argmax(1).view(n, n).float()  # (n, n)
            rejected = model.rejects(points).view(n, n).float()
            acc = float((model(x).argmax(1) == y).float().mean())
        ax.imshow(cls.numpy(), origin="lower", extent=_extent(lim), cmap="coolwarm", alpha=0.35, vmin=0, vmax=1)
        ax.contourf(gx.numpy(), gy.numpy(), rejected.numpy(), levels=[0.5, 1.5], colors="0.35", alpha=0.55)
        ax.scatter(x[:, 0], x[:, 1], c=y.numpy(), cmap="coolwarm", s=4, vmin=0, vmax=1)
        _mark_centres(ax, model.layer, lim)
        ax.set_title(f"{name}: acc {acc:.2f}, rejects {float(rejected.mean()):.0%} of plane", fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
    for ax in list(axes.T.flat)[len(models):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


def render_all(out_dir: Path | str, *, seed: int = 0, steps: int = 400, hidden: int = 8,
               distances: tuple[str, ...] = TOY_DISTANCES) -> dict:
    """Train one classifier per (dataset, distance) and write ``metric-toy-neurons.png``,
    ``metric-toy-moons.png`` and ``metric-toy-circles.png`` to ``out_dir``; returns a summary."""
    out_dir = Path(out_dir)
    summary: dict = {"files": [], "train_accuracy": {}, "plane_rejected": {}}
    points, _, _ = plane_grid()
    for data_name, make in TOY_DATA.items():
        x, y = make(seed=seed)
        models = {name: fit_toy(name, x, y, hidden=hidden, steps=steps, seed=seed) for name in distances}
        with torch.no_grad():
            summary["train_accuracy"][data_name] = {
                k: round(float((m(x).argmax(1) == y).float().mean()), 3) for k, m in models.items()}
            summary["plane_rejected"][data_name] = {
                k: round(float(m.rejects(points).float().mean()), 3) for k, m in models.items()}
        title = (f"Epsilon-softmax classifiers on {data_name} ({hidden} neurons each); grey: rejected "
                 "(the epsilon neuron wins)")
        summary["files"].append(str(plot_regions(models, x, y, out_dir / f"metric-toy-{data_name}.png", title)))
        if data_name == "moons":
            summary["files"].append(str(plot_neurons(models, out_dir / "metric-toy-neurons.png")))
    return summary
