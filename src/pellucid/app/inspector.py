"""Tab 1, the white-box inspector: prediction, reliability, every layer's features, and an attack.

Plain functions of their inputs (and the shared :class:`~pellucid.app.cache.ModelCache`), so they
are tested without a browser:

* :func:`inspect` classifies one image and explains it layer by layer with
  :meth:`~pellucid.models.whitebox.WhiteBoxNet.trace`: the TwoStep pixel levels, the conv layer's
  best rotated kernel at each pixel, each affine feature (a learned prototype) in the pose that
  matched best, and the logical layer's sum of an OR over the class's own prototypes and AND-NOT
  terms over the other classes' ones.
* :func:`reliability_for` places the prediction's confidence on the model's reliability curve
  (:mod:`pellucid.robust.reliability`): the curve recorded by ``pellucid evaluate`` for these
  weights when there is one, else the clean curve on a few hundred test images, measured once.
* :func:`attack` runs the registered PGD attack against the predicted class and shows how the
  evidence (logits, affine matches) moved.

Every forward holds the model's lock (:func:`pellucid.explain.base.model_lock`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from pellucid.app.cache import LoadedModel, ModelCache
from pellucid.app.figures import figure, render, signed_rgb
from pellucid.app.images import ModelInput, preview
from pellucid.errors import InvalidInputError, PellucidError
from pellucid.explain.base import model_lock
from pellucid.robust.reliability import ReliabilityCurve
from pellucid.viz.style import overlay_colours, show_signed, signed_colours, tile_figure

__all__ = ["AttackResult", "Inspection", "ReliabilityPoint", "attack", "inspect", "load_classifier",
           "reliability_for"]

RELIABILITY_IMAGES = 500  # test images for a reliability curve when the run has no recorded one
Progress = Callable[[float, str], None]


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ReliabilityPoint:
    """Where a confidence ``score`` sits on a reliability curve: of the test images scored at least
    this high, ``precision`` were classified correctly, and they are ``recall`` of all correctly
    classified ones. ``source`` says what the curve was measured on."""

    score: float
    precision: float
    recall: float
    source: str


@dataclass
class Inspection:
    """What the inspector shows for one input."""

    input: ModelInput
    probabilities: dict[str, float]
    predicted: int
    reliability: ReliabilityPoint | None
    reliability_note: str
    reliability_figure: np.ndarray | None = field(repr=False)
    layers: list[tuple[np.ndarray, str]] = field(repr=False)

    @property
    def label(self) -> str:
        return list(self.probabilities)[self.predicted]

    def summary(self) -> str:
        """Markdown: the prediction, its probability and its place on the reliability curve."""
        p = self.probabilities[self.label]
        lines = [f"**Prediction: {self.label}** (probability {p:.1%})"]
        if self.reliability is not None:
            r = self.reliability
            lines.append(f"Reliability score (the top probability): **{r.score:.3f}**. On the reliability "
                         f"curve ({r.source}), test images scored at least this high were right "
                         f"**{r.precision:.1%}** of the time (precision); they are {r.recall:.1%} of "
                         "all correctly classified test images (recall).")
        else:
            lines.append(self.reliability_note)
        return "\n\n".join(lines)


@dataclass
class AttackResult:
    """A PGD attack on one input: the adversarial image, what changed, and the evidence figure."""

    x_adv: torch.Tensor = field(repr=False)  # (1, C, H, W) in [0, 1], on the CPU
    adversarial: np.ndarray = field(repr=False)
    difference: np.ndarray = field(repr=False)
    before: dict[str, float]
    after: dict[str, float]
    eps: float
    steps: int
    evidence_figure: np.ndarray = field(repr=False)

    @property
    def label_before(self) -> str:
        return max(self.before, key=self.before.get)

    @property
    def label_after(self) -> str:
        return max(self.after, key=self.after.get)

    def summary(self) -> str:
        flipped = self.label_after != self.label_before
        verdict = ("**the attack changed the prediction**" if flipped
                   else "**the prediction held**")
        return (f"PGD-{self.steps} at L-inf eps {self.eps:g} (step eps/3, random start, seed 0) "
                f"against {self.label_before}: {self.label_before} "
                f"{self.before[self.label_before]:.1%} -> {self.label_after} "
                f"{self.after[self.label_after]:.1%}; {verdict}.")


# --------------------------------------------------------------------------- model checks


def load_classifier(cache: ModelCache, source: str | None) -> LoadedModel:
    """The image classifier with named classes at ``source``, or a readable error."""
    if not source:
        raise InvalidInputError("no model: start the app with --model DIR (a run directory of a "
                                "white-box network, e.g. `pellucid demo` writes runs/demo)")
    loaded = cache.get(source)
    shape = loaded.spec.input_shape
    if shape is None or len(shape) != 3 or loaded.class_names is None:
        raise InvalidInputError(f"{loaded.description} is not an image classifier with named classes; "
                                "the inspector takes a run directory such as `pellucid demo`'s")
    return loaded


def _probabilities(loaded: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    with model_lock(loaded.model), torch.no_grad():
        logits = loaded.model(x)
    if logits.dim() != 2 or logits.shape[1] != len(loaded.class_names):
        raise InvalidInputError(f"{loaded.description} gives {tuple(logits.shape)} outputs, not one "
                                f"logit per class ({len(loaded.class_names)})")
    return logits.detach().cpu().double().softmax(1)[0]


# --------------------------------------------------------------------------- inspect


def inspect(cache: ModelCache, source: str | None, image: ModelInput) -> Inspection:
    """Classify ``image`` with the model at ``source``; explain it layer by layer if it is white-box."""
    loaded = load_classifier(cache, source)
    x = loaded.as_input(image.x)
    probs = _probabilities(loaded, x)
    names = loaded.class_names
    predicted = int(probs.argmax())
    curve, source_text = reliability_for(cache, loaded)
    point, figure_ = None, None
    note = source_text
    if curve is not None:
        point = _place(curve, float(probs[predicted]), source_text)
        figure_ = reliability_figure(curve, point)
    layers = whitebox_layers(loaded, x) if hasattr(loaded.model, "trace") else []
    return Inspection(image, {n: float(p) for n, p in zip(names, probs)}, predicted, point, note,
                      figure_, layers)


def _place(curve: ReliabilityCurve, score: float, source: str) -> ReliabilityPoint:
    """The operating point at threshold ``score``: the last one whose threshold is >= score."""
    reached = torch.nonzero(curve.thresholds >= score - 1e-12)
    i = int(reached[-1, 0]) if len(reached) else 0
    return ReliabilityPoint(score, float(curve.precision[i]), float(curve.recall[i]), source)


def reliability_for(cache: ModelCache, loaded: LoadedModel) -> tuple[ReliabilityCurve | None, str]:
    """``(curve, what it was measured on)``, or ``(None, why there is none)``.

    A run directory's evaluation records (``pellucid evaluate``) of these exact weights come first:
    PGD over other attacks, then the most test images. Otherwise the clean curve on the first
    :data:`RELIABILITY_IMAGES` test images of the run's data is measured once per process.
    """
    return cache.derived(("reliability", loaded.source), lambda: _reliability(loaded))


def _reliability(loaded: LoadedModel) -> tuple[ReliabilityCurve | None, str]:
    from pellucid._io import tensors_sha256
    from pellucid.data import load_dataset
    from pellucid.models.inference import predict_logits
    from pellucid.report.records import load_records
    from pellucid.robust.reliability import reliability_curve

    if not loaded.is_run_dir:
        return None, "No reliability curve: the model is not a run directory."
    sha = tensors_sha256(loaded.model.state_dict())
    records = [r for r in load_records(loaded.source) if r["summary"].get("weights_sha256") == sha]
    if records:
        best = max(records, key=lambda r: (r["summary"].get("attack") == "pgd", r["summary"].get("n", 0)))
        s = best["summary"]
        steps = s.get("steps") or (s.get("options") or {}).get("steps")
        attack = f"{s['attack'].upper()}{f'-{steps}' if steps else ''}"
        return (ReliabilityCurve.from_dict(best["reliability"]),
                f"{attack} at {s.get('norm', 'linf').replace('linf', 'L-inf')} eps {s['eps']:g} on "
                f"{s['n']:,} test images, recorded by `pellucid evaluate`")
    data = loaded.config.get("data") or {}
    try:
        test = load_dataset(data["dataset"], "test", classes=data.get("classes"))
    except (KeyError, PellucidError) as e:
        return None, (f"No reliability curve: the run has no evaluation record and its test data is not "
                      f"available ({e}); run `pellucid evaluate {loaded.source}`.")
    test = test.subset(slice(0, RELIABILITY_IMAGES))
    with model_lock(loaded.model):
        logits = predict_logits(loaded.model, loaded.as_input(test.images)).cpu()
    return (reliability_curve(logits, test.labels),
            f"clean, first {len(test):,} {data['dataset']} test images; `pellucid evaluate "
            f"{loaded.source}` records the curve under attack")


def reliability_figure(curve: ReliabilityCurve, point: ReliabilityPoint) -> np.ndarray:
    fig = figure(4.2, 3.3)
    ax = fig.subplots()
    ax.step(curve.recall.numpy(), curve.precision.numpy(), where="post", color="tab:blue",
            label=f"reliability curve (AUC {curve.average_precision:.3f})")
    ax.plot([point.recall], [point.precision], "o", color="tab:red", ms=8,
            label=f"this input: score {point.score:.3f}")
    ax.axhline(curve.accuracy, color="grey", lw=0.7, ls=":", label=f"accuracy {curve.accuracy:.1%}")
    ax.set(xlabel="recall (share of correct answers kept)", ylabel="precision (share kept that are right)",
           xlim=(0, 1.02), ylim=(max(0.0, min(float(curve.precision.min()), point.precision) - 0.02), 1.005))
    ax.set_title(point.source, fontsize=7, parse_math=False)
    ax.legend(fontsize=7, loc="lower left")
    return render(fig)


# --------------------------------------------------------------------------- layers


@torch.no_grad()
def whitebox_layers(loaded: LoadedModel, x: torch.Tensor) -> list[tuple[np.ndarray, str]]:
    """One figure per layer of a white-box network, each with a caption."""
    model, names = loaded.model, loaded.class_names
    with model_lock(model):
        t = {k: v.cpu() for k, v in model.trace(x).items()}
        kernels = model.conv.kernels.detach().cpu().clone()
        n_rot = model.conv.angles.numel()
        prototypes = model.affine.padded_features().cpu()
        posed_affine = model.affine.posed_weights().cpu()  # (F, P, H, W)
        posed_logical = model.logical.posed_weights().cpu()  # (C, P, D)
        t0, t1 = float(model.twostep.t0), float(model.twostep.t1)
    return [
        (_twostep_figure(x, t, t0, t1), f"TwoStep: each pixel squashed to OFF (< {t0:.2f}), MEH or ON "
                                        f"(>= {t1:.2f}) levels"),
        (_conv_figure(t, kernels, n_rot), f"Conv features: the best of {len(kernels)} kernels x {n_rot} "
                                          "rotations at each pixel, and which rotation matched"),
        (_affine_figure(t, prototypes, posed_affine, names), "Affine features: each learned prototype "
                                                             "(top) in the pose that matched best (bottom)"),
        (_logical_figure(t, posed_logical, names), "Logical layer: logit = OR over the class's own "
                                                   "prototypes + AND-NOT terms over the other classes'"),
    ]


def _twostep_figure(x, t, t0: float, t1: float) -> np.ndarray:
    fig = figure(4.4, 2.4)
    a, b = fig.subplots(1, 2)
    a.imshow(x[0, 0].detach().cpu().numpy(), cmap="gray", vmin=0, vmax=1)
    a.set_title("model input (28 x 28)", fontsize=8)
    b.imshow(t["twostep"][0, 0].cpu().numpy(), cmap="gray", vmin=0, vmax=1)
    b.set_title(f"TwoStep levels (t0 {t0:.2f}, t1 {t1:.2f})", fontsize=8)
    for ax in (a, b):
        ax.set_xticks([])
        ax.set_yticks([])
    return render(fig)


def _conv_figure(t, kernels: torch.Tensor, n_rot: int) -> np.ndarray:
    conv = t["conv"][0, 0].cpu()
    pose = t["conv_pose"][0].cpu()
    angle = (pose % n_rot).double() * (360.0 / n_rot)
    angle = np.ma.masked_where((conv <= 0).numpy(), angle.numpy())
    fig = figure(2.2 * (2 + len(kernels)), 2.5)
    axes = fig.subplots(1, 2 + len(kernels))
    axes[0].imshow(conv.numpy(), cmap="Greys")
    axes[0].set_title(f"conv match (max {float(conv.max()):.2f})", fontsize=8)
    img = axes[1].imshow(angle, cmap="hsv", vmin=0, vmax=360)
    axes[1].set_title("rotation that matched (deg)", fontsize=8)
    fig.colorbar(img, ax=axes[1], fraction=0.046, pad=0.04)
    for k, kernel in enumerate(kernels):
        show_signed(axes[2 + k], kernel, title=f"kernel {k} (learned)")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return render(fig)


def _affine_columns(t, n_classes: int) -> list[int]:
    """All features when there are few, else each class's best-matching one."""
    n = t["affine"].shape[1]
    if n <= 16:
        return list(range(n))
    block = n // n_classes
    return [c * block + int(t["affine"][0, c * block:(c + 1) * block].argmax()) for c in range(n_classes)]


def _affine_figure(t, prototypes, posed, names) -> np.ndarray:
    """Each shown prototype (top) and its best pose over the conv output (bottom), one tiled
    picture (:func:`~pellucid.viz.style.tile_figure`): 0.36 s with an Axes per image, 0.07 s so."""
    n_classes = len(names)
    block = t["affine"].shape[1] // n_classes
    cols = _affine_columns(t, n_classes)
    winners = {c * block + int(t["affine"][0, c * block:(c + 1) * block].argmax()) for c in range(n_classes)}
    best_pose = posed[cols, t["affine_pose"][0, cols]]  # (len(cols), H, W)
    cells = torch.cat([signed_colours(prototypes[cols]),
                       overlay_colours(t["conv"][0, :1].expand(len(cols), -1, -1), best_pose)])
    labels = ([f"f{f} class {names[f // block]}{' *' if f in winners else ''}" for f in cols]
              + [f"match {float(t['affine'][0, f]):.2f}" for f in cols])
    return render(tile_figure(cells, 2, len(cols), "prototype (top) and its best pose over the conv output "
                              "(bottom); * = the class's best match", labels, cell=1.35), tight=False)


def _logical_contributions(t, posed_logical: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``M[c, c']``: what class ``c'``'s block of affine features adds to the logit of class ``c``
    in the pose the logical layer chose (rows sum to the logits)."""
    affine = t["affine"][0].double()  # (D,)
    rows = []
    for c in range(n_classes):
        g = posed_logical[c, int(t["logical_pose"][0, c])].double()  # (D,)
        rows.append((affine * g).view(n_classes, -1).sum(1))
    return torch.stack(rows)  # (C, C)


def _logical_figure(t, posed_logical, names) -> np.ndarray:
    n = len(names)
    m = _logical_contributions(t, posed_logical, n)
    size = min(1.0 + 0.55 * n, 7.0)
    fig = figure(size + 1.6, size)
    ax = fig.subplots()
    lim = float(m.abs().max()) or 1.0
    ax.imshow(m.numpy(), cmap="bwr", vmin=-lim, vmax=lim)
    if n <= 10:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{float(m[i, j]):+.2f}", ha="center", va="center", fontsize=7)
    logits = t["logits"][0]
    ax.set_yticks(range(n), [f"logit {names[c]} = {float(logits[c]):.2f}" for c in range(n)], fontsize=7)
    ax.set_xticks(range(n), [f"block {names[c]}" for c in range(n)], fontsize=7, rotation=30)
    ax.set_title("diagonal: OR over own prototypes; off-diagonal: AND-NOT", fontsize=8)
    return render(fig)


# --------------------------------------------------------------------------- attack


def attack(cache: ModelCache, source: str | None, x: np.ndarray | torch.Tensor | None, eps: float,
           steps: int = 40, progress: Progress | None = None) -> AttackResult:
    """PGD (the registered ``pgd``: L-inf, step eps/3, random start, seed 0) against the predicted
    class of ``x`` (``(1, C, H, W)`` in [0, 1], as :func:`inspect` saw it)."""
    from pellucid.robust.attacks import run_attack

    if x is None:
        raise InvalidInputError("nothing to attack: inspect a drawing or an upload first")
    if not (isinstance(eps, (int, float)) and 0 < eps <= 1):
        raise InvalidInputError(f"eps must be in (0, 1] (L-inf, in [0, 1] pixel units), got {eps}")
    if not (isinstance(steps, (int, float)) and int(steps) == steps and 1 <= steps <= 1000):
        raise InvalidInputError(f"steps must be an integer in 1..1000, got {steps}")
    loaded = load_classifier(cache, source)
    x = loaded.as_input(torch.as_tensor(np.asarray(x)))
    if tuple(x.shape[1:]) != tuple(loaded.spec.input_shape):
        raise InvalidInputError("the inspected image was made for another model; inspect it again")
    report = progress or (lambda fraction, text: None)
    report(0.0, f"PGD-{int(steps)} at eps {eps:g}")
    before = _probabilities(loaded, x)
    y = before.argmax().view(1)
    with model_lock(loaded.model):
        adv = run_attack("pgd", loaded.model, x, y, eps=float(eps), steps=int(steps),
                         value_range=loaded.spec.value_range, generator=torch.Generator().manual_seed(0),
                         progress=True).adversarial
    after = _probabilities(loaded, adv)
    report(1.0, "done")
    names = loaded.class_names
    figure_ = evidence_figure(loaded, x, adv, before, after)
    return AttackResult(adv.detach().cpu(), preview(adv), preview_signed(adv - x, float(eps)),
                        {n: float(p) for n, p in zip(names, before)},
                        {n: float(p) for n, p in zip(names, after)}, float(eps), int(steps), figure_)


def preview_signed(delta: torch.Tensor, limit: float, min_size: int = 224) -> np.ndarray:
    """A perturbation ``(1, C, H, W)`` (channel sum) as a signed map, enlarged like :func:`preview`."""
    heat = delta[0].detach().cpu().sum(0)
    factor = max(1, -(-min_size // max(heat.shape)))
    heat = heat.repeat_interleave(factor, 0).repeat_interleave(factor, 1)
    return signed_rgb(heat, limit * delta.shape[1])


@torch.no_grad()
def evidence_figure(loaded: LoadedModel, x: torch.Tensor, adv: torch.Tensor,
                    before: torch.Tensor, after: torch.Tensor) -> np.ndarray:
    """Logits and (for white-box networks) affine matches on the clean and the attacked input."""
    names = list(loaded.class_names)
    with model_lock(loaded.model):
        traces = ([{k: t.cpu() for k, t in loaded.model.trace(v).items()} for v in (x, adv)]
                  if hasattr(loaded.model, "trace") else None)
        logits = [loaded.model(v)[0].cpu() for v in (x, adv)]
    panels = 2 if traces else 1
    fig = figure(4.2 * panels, 3.0)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    _paired_bars(axes[0], names, logits[0], logits[1], "logit")
    axes[0].set_title(f"logits (p: {before.max():.2f} -> {after.max():.2f})", fontsize=8)
    if traces:
        cols = _affine_columns(traces[0], len(names))
        block = traces[0]["affine"].shape[1] // len(names)
        labels = [f"f{f} ({names[f // block]})" for f in cols]
        _paired_bars(axes[1], labels, traces[0]["affine"][0, cols], traces[1]["affine"][0, cols], "match")
        axes[1].set_title("affine feature matches", fontsize=8)
    return render(fig)


def _paired_bars(ax, labels: list[str], clean: torch.Tensor, attacked: torch.Tensor, what: str) -> None:
    pos = np.arange(len(labels))
    ax.bar(pos - 0.2, clean.cpu().numpy(), 0.4, label="clean", color="tab:blue")
    ax.bar(pos + 0.2, attacked.cpu().numpy(), 0.4, label="attacked", color="tab:red")
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(pos, labels, fontsize=7, rotation=30 if len(labels) > 4 else 0)
    ax.set_ylabel(what, fontsize=8)
    ax.legend(fontsize=7)
