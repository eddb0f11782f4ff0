"""Tab 3, rejection: a metric-neuron model with an epsilon neuron says "I don't know".

A model that can reject (:mod:`pellucid.robust.rejection`; e.g. ``dictionary-mlp``) computes the
distances ``d_j`` of its input to ``H`` learned centres and an epsilon-softmax
``a = softmax(-s [d_1..d_H, epsilon])``; it rejects when the epsilon neuron wins, i.e. when even
the nearest centre is farther than the threshold ``epsilon``: ``min_j d_j > epsilon``.

:func:`classify` shows, for one input and a threshold (a multiple of the trained epsilon), the class
scores, the decision and why (the nearest centres, their distances and the classes they vote
for). :func:`tradeoff` measures once per model what each threshold costs on the model's test data:
the share of test images kept (coverage), the accuracy on those kept, and the share of
uniform-noise images rejected. The threshold is set only for the duration of one call, under the
model's lock, and restored (:func:`pellucid.robust.rejection.temporary_epsilon`), so users with
different thresholds never see each other's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from pellucid.app.cache import LoadedModel, ModelCache
from pellucid.app.figures import figure, render
from pellucid.app.images import ModelInput
from pellucid.errors import InvalidInputError, PellucidError
from pellucid.explain.base import model_lock

__all__ = ["RejectionResult", "Tradeoff", "blank_input", "classify", "load_rejecting", "noise_input",
           "tradeoff"]

TRADEOFF_IMAGES = 1000  # test images for the coverage / accuracy curve
NOISE_IMAGES = 500  # uniform-noise images for the noise rejection rate
NEAREST = 5  # centres shown
FACTOR_RANGE = (0.25, 2.0)  # threshold / trained epsilon


@dataclass(frozen=True)
class Tradeoff:
    """Per test image: the distance to the nearest centre and whether the prediction is right; the
    same distances for uniform noise. ``at(threshold)`` reads the trade-off off them."""

    min_distance: torch.Tensor
    correct: torch.Tensor
    noise_min_distance: torch.Tensor
    source: str

    def at(self, threshold: float) -> tuple[float, float | None, float]:
        """``(coverage, accuracy on the kept images or None, noise rejection rate)``."""
        coverage, accuracy, noise = (float(v) for v in self.curve([threshold]))
        return coverage, None if math.isnan(accuracy) else accuracy, noise

    def curve(self, thresholds) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`at` for every threshold at once, as float64 tensors (accuracy NaN where no image
        is kept): an image is kept at ``t`` when its distance is ``<= t``, so the number kept is a
        ``searchsorted`` in the sorted distances and the number right among them a prefix sum."""
        t = torch.as_tensor(thresholds, dtype=torch.float64).reshape(-1)
        distances, order = self.min_distance.double().sort()
        kept = torch.searchsorted(distances, t, right=True)
        right = torch.cat([distances.new_zeros(1), self.correct[order].double().cumsum(0)])[kept]
        noise = self.noise_min_distance.double().sort().values
        noise_kept = torch.searchsorted(noise, t, right=True)
        accuracy = torch.where(kept > 0, right / kept.clamp_min(1).double(), torch.nan)
        return kept.double() / max(len(distances), 1), accuracy, 1 - noise_kept.double() / max(len(noise), 1)


@dataclass
class RejectionResult:
    """The decision for one input at one threshold, and the figures that explain it."""

    input: ModelInput
    scores: dict[str, float]
    rejected: bool
    min_distance: float
    threshold: float
    trained_epsilon: float
    epsilon_activation: float | None
    nearest: list[tuple[float, str | None]]
    figure: np.ndarray = field(repr=False)
    scores_figure: np.ndarray = field(repr=False)
    tradeoff_figure: np.ndarray | None = field(repr=False)
    tradeoff_note: str = ""

    def summary(self) -> str:
        best = max(self.scores, key=self.scores.get)
        if self.rejected:
            head = (f"**REJECTED: \"I don't know\".** The nearest centre is at distance "
                    f"{self.min_distance:.2f}, farther than the threshold {self.threshold:.2f}, so the "
                    "epsilon neuron wins and every class score is pushed towards 0.")
        else:
            head = (f"**ACCEPTED: {best}** (score {self.scores[best]:.3f}). The nearest centre is at "
                    f"distance {self.min_distance:.2f}, within the threshold {self.threshold:.2f}.")
        lines = [head, f"Threshold = {self.threshold / self.trained_epsilon:.2f} x the trained epsilon "
                       f"{self.trained_epsilon:.2f}."]
        if self.epsilon_activation is not None:
            lines.append(f"Epsilon neuron activation: {self.epsilon_activation:.3f}.")
        if self.tradeoff_note:
            lines.append(self.tradeoff_note)
        return "\n\n".join(lines)


def load_rejecting(cache: ModelCache, source: str | None) -> LoadedModel:
    """The model at ``source`` if it can reject (an epsilon neuron) and names its classes."""
    if not source:
        raise InvalidInputError("no model: start the app with --model DIR, a run directory of a model "
                                "that can reject (e.g. `pellucid train dictionary-mlp --data-init`)")
    loaded = cache.get(source)
    model = loaded.model
    if not all(hasattr(model, a) for a in ("rejects", "distances", "epsilon", "set_epsilon")):
        raise InvalidInputError(f"{loaded.description} cannot reject inputs (it has no epsilon neuron); "
                                "train a dictionary-mlp")
    if loaded.class_names is None:
        raise InvalidInputError(f"{loaded.description} has no class names; use a run directory")
    return loaded


def noise_input(shape: tuple[int, int, int], seed: int = 0) -> ModelInput:
    """Uniform noise in [0, 1] of the model's input shape."""
    x = torch.rand((1, *shape), generator=torch.Generator().manual_seed(int(seed)), device="cpu", dtype=torch.float32)
    return ModelInput(x, (f"uniform noise in [0, 1], {shape[1]} x {shape[2]}, seed {int(seed)}",), "noise")


def blank_input(shape: tuple[int, int, int]) -> ModelInput:
    """An all-black image of the model's input shape."""
    return ModelInput(torch.zeros((1, *shape)), (f"a blank (all 0) {shape[1]} x {shape[2]} image",), "blank")


def classify(cache: ModelCache, source: str | None, image: ModelInput, factor: float = 1.0) -> RejectionResult:
    """Scores and decision for ``image`` at threshold ``factor`` x the model's trained epsilon."""
    from pellucid.robust.rejection import temporary_epsilon

    if not (isinstance(factor, (int, float)) and FACTOR_RANGE[0] <= factor <= FACTOR_RANGE[1]):
        raise InvalidInputError(f"threshold factor must be in {FACTOR_RANGE[0]}..{FACTOR_RANGE[1]}, "
                                f"got {factor}")
    loaded = load_rejecting(cache, source)
    model = loaded.model
    if tuple(image.x.shape[1:]) != tuple(loaded.spec.input_shape):
        raise InvalidInputError("the image was prepared for another model; load it again")
    x = loaded.as_input(image.x)
    with model_lock(model), temporary_epsilon(model) as trained, torch.no_grad():
        threshold = float(factor) * trained
        model.set_epsilon(threshold)
        logits = model(x)[0].cpu()
        rejected = bool(model.rejects(x)[0])
        distances = model.distances(x)[0].cpu()
        activation = float(model.activations(x)[0, -1]) if hasattr(model, "activations") else None
    names = loaded.class_names
    order = distances.argsort()[:NEAREST]
    votes = _votes(model, len(names))
    nearest = [(float(distances[j]), names[int(votes[j])] if votes is not None else None) for j in order]
    curve = tradeoff(cache, loaded)
    result = RejectionResult(image, {n: float(s) for n, s in zip(names, logits)}, rejected,
                             float(distances.min()), threshold, trained, activation, nearest,
                             _why_figure(model, loaded, x, order, nearest, threshold, rejected),
                             _scores_figure(names, logits, activation, rejected), None)
    if isinstance(curve, Tradeoff):
        coverage, accuracy, noise = curve.at(threshold)
        acc = "no image kept" if accuracy is None else f"accuracy on them {accuracy:.1%}"
        result.tradeoff_note = (f"At this threshold the model keeps {coverage:.1%} of {curve.source} "
                                f"({acc}) and rejects {noise:.1%} of uniform noise.")
        # the same for every image at this threshold: drawn once per (model, threshold), about half
        # of a request's time otherwise
        result.tradeoff_figure = cache.derived(("tradeoff-figure", loaded.source, threshold, trained),
                                               lambda: _read_only(tradeoff_figure(curve, threshold, trained)))
    else:
        result.tradeoff_note = curve
    return result


def _read_only(array: np.ndarray) -> np.ndarray:
    """``array``, shared between requests, made read-only so that no request can change another's."""
    array.flags.writeable = False
    return array


def _votes(model, n_classes: int) -> torch.Tensor | None:
    """The class each centre's value row votes for (models with a key/value dictionary)."""
    values = getattr(model, "values", None)
    if isinstance(values, torch.Tensor) and values.dim() == 2 and values.shape[1] == n_classes:
        return values.detach().argmax(1)
    return None


def _centre_images(model, shape) -> torch.Tensor | None:
    """Centres as images in [0, 1] when they live in the (flattened, [-1, 1]) input space."""
    keys = getattr(model, "keys", None)
    if isinstance(keys, torch.Tensor) and keys.dim() == 2 and keys.shape[1] == int(np.prod(shape)):
        return ((keys.detach().cpu() + 1) / 2).clamp(0, 1).view(-1, *shape)
    return None


def _scores_figure(names, logits: torch.Tensor, activation: float | None, rejected: bool) -> np.ndarray:
    """Class scores, and the epsilon neuron's activation beside them."""
    fig = figure(7.0, 2.6)
    ax = fig.subplots()
    labels = list(names) + (["epsilon neuron"] if activation is not None else [])
    values = logits.cpu().double().tolist() + ([activation] if activation is not None else [])
    colours = ["tab:blue"] * len(names)
    if activation is not None:
        colours.append("tab:red" if rejected else "tab:grey")
    ax.bar(range(len(values)), values, color=colours)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(range(len(values)), labels, fontsize=7, rotation=30 if len(labels) > 6 else 0)
    ax.set_title("class scores (blue) and the epsilon neuron's activation", fontsize=8)
    return render(fig)


def _why_figure(model, loaded, x, order, nearest, threshold: float, rejected: bool) -> np.ndarray:
    images = _centre_images(model, loaded.spec.input_shape)
    fig = figure(7.0, 4.2 if images is not None else 2.6)
    grid = fig.add_gridspec(2 if images is not None else 1, NEAREST + 1)
    if images is not None:
        ax = fig.add_subplot(grid[0, 0])
        ax.imshow(x[0].detach().cpu().permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title("input", fontsize=8)
        for i, j in enumerate(order):
            ax = fig.add_subplot(grid[0, i + 1])
            ax.imshow(images[int(j)].permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
            d, vote = nearest[i]
            ax.set_title(f"d {d:.1f}" + (f"\n{vote}" if vote else ""), fontsize=7, parse_math=False)
        for ax in fig.axes:
            ax.set_xticks([])
            ax.set_yticks([])
    bars = fig.add_subplot(grid[-1, :])
    labels = [f"#{int(j)}" + (f" ({vote})" if vote else "") for j, (_, vote) in zip(order, nearest)]
    dists = [d for d, _ in nearest]
    colours = ["tab:red" if d > threshold else "tab:green" for d in dists]
    bars.barh(range(len(dists)), dists, color=colours)
    bars.axvline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:.2f}")
    bars.set_yticks(range(len(dists)), labels, fontsize=7)
    bars.invert_yaxis()
    bars.set_xlabel("distance to the centre", fontsize=8)
    bars.legend(fontsize=7, loc="lower right")
    bars.set_title(f"nearest centres: {'all beyond' if rejected else 'the nearest is within'} the "
                   "threshold", fontsize=8)
    return render(fig)


def tradeoff(cache: ModelCache, loaded: LoadedModel) -> Tradeoff | str:
    """The model's :class:`Tradeoff` on its test data (measured once), or why there is none."""
    return cache.derived(("tradeoff", loaded.source), lambda: _tradeoff(loaded))


def _tradeoff(loaded: LoadedModel) -> Tradeoff | str:
    from pellucid.data import load_dataset
    from pellucid.models.inference import predict_logits

    data = (loaded.config or {}).get("data") or {}
    try:
        test = load_dataset(data["dataset"], "test", classes=data.get("classes"))
    except (KeyError, PellucidError) as e:
        return f"No coverage / accuracy curve: the model's test data is not available ({e})."
    test = test.subset(slice(0, TRADEOFF_IMAGES))
    model = loaded.model
    noise = torch.rand((NOISE_IMAGES, *loaded.spec.input_shape), generator=torch.Generator().manual_seed(0),
                       device="cpu", dtype=torch.float32)
    with model_lock(model), torch.no_grad():
        images = loaded.as_input(test.images)
        correct = predict_logits(model, images).argmax(1).cpu() == test.labels
        min_d = torch.cat([model.distances(b).min(1).values.cpu() for b in images.split(256)])
        noise_d = torch.cat([model.distances(b).min(1).values.cpu() for b in loaded.as_input(noise).split(256)])
    return Tradeoff(min_d.double(), correct, noise_d.double(),
                    f"the first {len(test):,} {data['dataset']} test images")


def tradeoff_figure(curve: Tradeoff, threshold: float, trained: float) -> np.ndarray:
    """Coverage vs accuracy over thresholds, the chosen one marked."""
    lo, hi = FACTOR_RANGE
    ts = torch.linspace(lo * trained, hi * trained, 200, dtype=torch.float64)
    kept, accuracy_at, rejected = (v.numpy() for v in curve.curve(ts))
    ts = ts.numpy()
    fig = figure(7.0, 3.0)
    left, right = fig.subplots(1, 2)
    left.plot(kept, accuracy_at, color="tab:blue")
    coverage, accuracy, noise = curve.at(threshold)
    if accuracy is not None:
        left.plot([coverage], [accuracy], "o", color="tab:red", ms=8, label="chosen threshold")
        left.legend(fontsize=7, loc="lower left")
    left.set(xlabel="coverage (share of test images kept)", ylabel="accuracy on the kept images", xlim=(0, 1.02))
    left.set_title("coverage / accuracy trade-off", fontsize=8)
    right.plot(ts / trained, kept, label="test images kept", color="tab:blue")
    right.plot(ts / trained, rejected, label="noise rejected", color="tab:orange")
    right.axvline(threshold / trained, color="tab:red", ls="--", lw=1, label="chosen")
    right.set(xlabel="threshold / trained epsilon", ylabel="share", ylim=(-0.02, 1.02))
    right.legend(fontsize=7)
    right.set_title("what a threshold keeps and rejects", fontsize=8)
    return render(fig)
