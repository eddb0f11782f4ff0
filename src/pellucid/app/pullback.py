"""Tab 2, the pullback explorer: an attribution and a counterfactual for one image, as
``pellucid explain`` computes them, with any registered explainer and target.

:func:`explain` takes the image (a file or ``skimage:NAME``), a :class:`Target` (the top class, a
class index, a hidden unit ``PATH:CHANNEL[@H,W]`` or "looks like this other image"), and
:class:`Settings` (method, temperature, steps, alpha, eps), and returns the four pictures of the
paper's app (input, attribution, counterfactual, difference), the top predictions when the model
ends in a classification head, the target's score before and after the ascent, and the rewrite's
coverage report. Explainers are built once per (model, method, temperature, gate) and shared:
their calls hold the model's lock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from pellucid._warnings import recorded_warnings
from pellucid.app.cache import LoadedModel, ModelCache, head_names
from pellucid.app.figures import signed_rgb
from pellucid.app.images import ModelInput, from_file, from_photo, preview
from pellucid.errors import InvalidInputError

__all__ = ["PullbackResult", "Settings", "Target", "TARGET_KINDS", "explain", "load_input"]

TARGET_KINDS = ("top class", "class index", "hidden unit", "looks like another image")
MAX_STEPS = 50
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class Target:
    """``kind`` is one of :data:`TARGET_KINDS`; ``value`` the class index, the unit
    (``PATH:CHANNEL[@H,W]``) or the other image (a file or ``skimage:NAME``)."""

    kind: str = "top class"
    value: int | str | None = None


@dataclass(frozen=True)
class Settings:
    """The explainer (a registered name), its soft-gate temperature and gate, and the
    counterfactual ascent: ``steps`` L2 steps of length ``alpha`` (in [0, 1] pixel units), kept in
    the L2 ball of radius ``eps`` around the input (``None``: no ball)."""

    method: str = "pullback"
    temperature: float = 0.3
    gate: str = "sigmoid"
    steps: int = 5
    alpha: float = 20.0
    eps: float | None = None

    def check(self) -> None:
        from pellucid.explain.methods import EXPLAINERS

        if self.method not in EXPLAINERS:
            raise InvalidInputError(f"unknown method {self.method!r}; known: {', '.join(EXPLAINERS)}")
        if not (int(self.steps) == self.steps and 0 <= self.steps <= MAX_STEPS):
            raise InvalidInputError(f"steps must be an integer in 0..{MAX_STEPS}, got {self.steps}")
        for name, value in (("temperature", self.temperature), ("alpha", self.alpha), ("eps", self.eps)):
            if value is None and name == "eps":
                continue
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise InvalidInputError(f"{name} must be a finite number > 0, got {value}")


@dataclass
class PullbackResult:
    """Pictures as ``(H, W, 3)`` uint8 arrays (enlarged for small inputs); ``top``: the top
    predictions ``{name: probability}`` or ``None`` without a head (``head_note`` says why)."""

    input: np.ndarray = field(repr=False)
    attribution: np.ndarray = field(repr=False)
    counterfactual: np.ndarray | None = field(repr=False)
    difference: np.ndarray | None = field(repr=False)
    top: dict[str, float] | None
    head_note: str
    target: str
    score_before: float | None
    score_after: float | None
    coverage: str
    notes: tuple[str, ...]
    conversion: str
    model: str

    def summary(self) -> str:
        lines = [f"**{self.model}**, target: {self.target}."]
        if self.score_before is not None:
            lines.append(f"Target score {self.score_before:.4g} -> **{self.score_after:.4g}** after the "
                         "counterfactual ascent.")
        lines += [f"Note: {n}" for n in self.notes]
        return "\n\n".join(lines)


def load_input(source: str | None, shape: tuple[int, int, int]) -> ModelInput:
    """An uploaded file path or ``skimage:NAME`` as the model's input."""
    if not source:
        raise InvalidInputError("no image: upload one or choose a bundled photo")
    if source.startswith("skimage:"):
        return from_photo(source.split(":", 1)[1], shape)
    return from_file(source, shape)


def explain(cache: ModelCache, source: str | None, image: str | None, target: Target = Target(),
            settings: Settings = Settings(), progress: Progress | None = None) -> PullbackResult:
    """The attribution and counterfactual of ``image`` for the model at ``source``."""
    from pellucid.explain import counterfactual
    from pellucid.viz.explain import minmax_per_image, signed_map

    report = progress or (lambda fraction, text: None)
    settings.check()
    if not source:
        raise InvalidInputError("choose a model")
    report(0.0, f"loading {source}")
    loaded = cache.get(source)
    shape = loaded.spec.input_shape
    if shape is None or len(shape) != 3:
        raise InvalidInputError(f"{loaded.description} does not take images (input shape {shape})")
    model_input = load_input(image, shape)
    lo, hi = loaded.spec.value_range
    x = loaded.as_input(model_input.x * (hi - lo) + lo)
    report(0.05, "building the explainer")
    explainer, notes = _explainer(cache, loaded, settings)
    resolved, target_text = _resolve_target(cache, loaded, target, x)
    output = _forward(loaded, x)
    report(0.1, "attribution")
    attribution = explainer.attribute(x, target=resolved)
    result = None
    if settings.steps > 0:
        reporter = _StepReporter(explainer, settings.steps, report)
        result = counterfactual(reporter, x, resolved, steps=settings.steps, alpha=settings.alpha,
                                eps=settings.eps, pixel_range=(lo, hi))
    report(1.0, "done")

    heat = signed_map(attribution.detach().cpu())[0].float()
    limit = float(heat.abs().flatten().quantile(0.995)) or None
    shown = (x.detach().cpu() - lo) / (hi - lo)
    top, head_note = _top(loaded, output)
    if result is not None:
        cf = (result.counterfactual.detach().cpu() - lo) / (hi - lo)
        cf_image, diff_image = preview(cf), preview(minmax_per_image(cf - shown))
        before, after = float(result.scores[0, 0]), float(result.scores[-1, 0])
    else:
        cf_image = diff_image = None
        before = after = None
    coverage = getattr(explainer, "coverage", None)
    return PullbackResult(
        preview(shown), _enlarge(signed_rgb(heat, limit), heat.shape), cf_image, diff_image, top,
        head_note, target_text, before, after,
        str(coverage) if coverage is not None else
        f"{settings.method} does not rewrite the model (no coverage report: only the pullback replaces "
        "gates)", tuple(notes), model_input.describe(), loaded.description)


def _forward(loaded: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    from pellucid.explain.base import model_lock

    with model_lock(loaded.model), torch.no_grad():
        return loaded.model(x).cpu()


def _enlarge(rgb: np.ndarray, shape, min_size: int = 224) -> np.ndarray:
    factor = max(1, -(-min_size // max(shape)))
    return rgb.repeat(factor, 0).repeat(factor, 1) if factor > 1 else rgb


def _explainer(cache: ModelCache, loaded: LoadedModel, settings: Settings):
    """The shared explainer and the warnings its construction gave (e.g. coverage fallbacks)."""
    from pellucid.explain import create_explainer

    def build():
        with recorded_warnings() as caught:  # this thread's only: other users' requests run beside
            explainer = create_explainer(settings.method, loaded.model, temperature=settings.temperature,
                                         gate=settings.gate)
        return explainer, [str(w).splitlines()[0] for w in caught]

    key = ("explainer", loaded.source, settings.method, float(settings.temperature), settings.gate)
    explainer, notes = cache.derived(key, build)
    notes = list(notes)
    if loaded.random_init:
        notes.append(f"{loaded.spec.name} has no trained weights here: this explains a randomly "
                     "initialised network")
    return explainer, notes


def _resolve_target(cache: ModelCache, loaded: LoadedModel, target: Target, x: torch.Tensor):
    """``(target for the explainer, text shown)``; every problem is a readable error."""
    from pellucid.explain import CosineTarget, UnitTarget

    kind, value = target.kind, target.value
    if kind == "top class":
        return None, "the top output"
    if kind == "class index":
        index = _integer(value)
        n = _forward(loaded, x).flatten(1).shape[1]
        if not 0 <= index < n:
            raise InvalidInputError(f"class index {value} is out of range: {loaded.spec.name} has {n} "
                                    f"outputs (0..{n - 1})")
        names = head_names(loaded, n)
        return torch.tensor([index]), f"output {index}" + (f" ({names[index]})" if names else "")
    if kind == "hidden unit":
        unit = _check_unit(cache, loaded, str(value or "").strip())
        return UnitTarget(unit), f"hidden unit {unit}"
    if kind == "looks like another image":
        reference = load_input(value, loaded.spec.input_shape)
        lo, hi = loaded.spec.value_range
        ref = loaded.as_input(reference.x * (hi - lo) + lo)
        return (CosineTarget.from_input(loaded.model, ref),
                f"cosine similarity of the output to {reference.name}'s")
    raise InvalidInputError(f"unknown target kind {kind!r}; choose one of {', '.join(TARGET_KINDS)}")


def _integer(value) -> int:
    """A class index from a number box (``3.0``) or text (``"3"``)."""
    text = str(value).strip()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if text.lstrip("-").isascii() and text.lstrip("-").isdigit():
        return int(text)
    raise InvalidInputError(f"class index must be an integer, got {value!r}")


def _check_unit(cache: ModelCache, loaded: LoadedModel, text: str):
    from pellucid.explain.units import check_unit, model_dtype_device, module_output_shapes

    if not text:
        raise InvalidInputError("hidden unit: give a unit as PATH:CHANNEL, e.g. conv:0 or Mixed_7c:5@4,4")

    def probe():
        dtype, device = model_dtype_device(loaded.model)
        blank = torch.zeros((1, *loaded.spec.input_shape), dtype=dtype, device=device)
        return module_output_shapes(loaded.model, blank.clamp(*loaded.spec.value_range))

    shapes = cache.derived(("shapes", loaded.source), probe)
    return check_unit(loaded.model, text, shapes, "hidden unit")


def _top(loaded: LoadedModel, output: torch.Tensor, k: int = 5) -> tuple[dict[str, float] | None, str]:
    flat = output.flatten(1)
    names = head_names(loaded, flat.shape[1]) if flat.dim() == 2 else None
    if names is None:
        return None, (f"{loaded.spec.name} has no classification head here ({flat.shape[1]:,} outputs): "
                      "no top predictions; use a hidden unit or another image as the target")
    probs = flat.double().softmax(1)[0]
    values, indices = probs.topk(min(k, len(names)))
    return {f"{names[int(i)]} ({int(i)})": float(v) for v, i in zip(values, indices)}, ""


class _StepReporter:
    """Stands in for an explainer in :func:`~pellucid.explain.counterfactual`: reports each ascent
    step (one gradient call each) to ``report``, which may raise to stop the ascent."""

    def __init__(self, explainer, steps: int, report: Progress) -> None:
        self.explainer, self.model = explainer, explainer.model
        self.steps, self.report, self.done = steps, report, 0

    def gradient(self, x: torch.Tensor, target):
        self.report(0.15 + 0.85 * self.done / self.steps, f"counterfactual step {self.done + 1} of "
                                                          f"{self.steps}")
        self.done += 1
        return self.explainer.gradient(x, target)
