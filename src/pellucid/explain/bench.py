"""Every explainer scored by every metric on one batch: the table behind ``pellucid explain-bench``.

:func:`explain_bench` resolves the targets once (so every method explains the same scalar), runs
each registered explainer (:data:`~pellucid.explain.methods.EXPLAINERS`) on the batch and scores
its attributions with each registered metric (:data:`~pellucid.explain.metrics.METRICS`). A row
holds the mean over the batch (NaN scores, e.g. a correlation over a constant row, left out and
counted), its standard error, and the seconds spent. Metrics that re-explain perturbed inputs or
randomised models (``max_sensitivity``, ``random_logit``, ``model_parameter_randomisation``) are
given the method itself, so they measure the method being scored. Localisation metrics
(``pointing_game``, ``focus``) are scored on 2 x 2 mosaics of the batch (:func:`mosaic_batch`),
resized to the model's input size, whose target quadrants are the mask.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pellucid.errors import InvalidInputError
from pellucid.explain.base import check_inputs
from pellucid.explain.methods import EXPLAINERS, create_explainer
from pellucid.explain.metrics import METRICS, create_metric, make_mosaics
from pellucid.explain.targets import Target, resolve_target

__all__ = ["BenchRow", "LOCALISATION_METRICS", "explain_bench", "mosaic_batch", "summarise_scores"]

LOCALISATION_METRICS = ("pointing_game", "focus")
_EXPLAINER_METRICS_KEY = "explainer"  # metrics taking this keyword re-run the scored method


@dataclass
class BenchRow:
    """One (method, metric) cell: ``mean`` and standard error ``sem`` over ``n`` valid samples
    (``nan`` samples left out), and where the time went."""

    method: str
    metric: str
    mean: float
    sem: float
    n: int
    n_nan: int
    higher_is_better: bool
    attribution_seconds: float
    metric_seconds: float
    options: dict[str, Any] = field(default_factory=dict)
    note: str | None = None  # why the cell is empty (the method does not apply to the model)

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in self.__dict__.items()}


def summarise_scores(scores: Any) -> tuple[float, float, int, int]:
    """``(mean, sem, n, n_nan)`` of per-sample scores (a tensor, or a curve result's ``auc`` /
    ``score``)."""
    for attr in ("auc", "score"):
        scores = getattr(scores, attr, scores)
    if not isinstance(scores, torch.Tensor):
        raise InvalidInputError(f"a metric returned {type(scores).__name__}, not per-sample scores")
    s = scores.detach().double().flatten()
    valid = s[~torch.isnan(s)]
    n = int(valid.numel())
    mean = float(valid.mean()) if n else math.nan
    sem = float(valid.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.nan
    return mean, sem, n, int(s.numel()) - n


def mosaic_batch(inputs: torch.Tensor, labels: torch.Tensor, n_mosaics: int, seed: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(images, masks, targets)``: 2 x 2 mosaics (:func:`~pellucid.explain.metrics.make_mosaics`)
    of ``inputs`` resized back to the inputs' ``H x W`` (bilinear, antialiased; masks nearest), so
    a model with a fixed input size takes them."""
    m = make_mosaics(inputs, labels, n_mosaics, seed=seed)
    size = tuple(inputs.shape[-2:])
    images = F.interpolate(m.images, size=size, mode="bilinear", antialias=True, align_corners=False)
    lo, hi = inputs.amin(), inputs.amax()  # resampling may overshoot the value range slightly
    masks = F.interpolate(m.masks.float(), size=size, mode="nearest") > 0.5
    return images.clamp(lo, hi), masks, m.targets


def _method_spec(method: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(method, str):
        return method, {}
    if isinstance(method, tuple) and len(method) == 2 and isinstance(method[0], str) \
            and isinstance(method[1], dict):
        return method[0], dict(method[1])
    raise InvalidInputError(f"a method is a registered name or (name, options); got {method!r}")


def _check_names(names: Sequence[str], registry: Any, what: str) -> None:
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise InvalidInputError(f"unknown {what} {', '.join(map(repr, unknown))}; known: "
                                f"{', '.join(registry)}")


def explain_bench(model: nn.Module, inputs: torch.Tensor, target: Target = None, *,
                  methods: Sequence[Any] = ("pullback", "gradient"),
                  metrics: Sequence[str] = ("infidelity", "faithfulness_correlation"),
                  metric_options: dict[str, dict[str, Any]] | None = None,
                  labels: torch.Tensor | None = None, n_mosaics: int = 16, seed: int = 0,
                  value_range: tuple[float, float] | None = None, skip_inapplicable: bool = True,
                  on_row: Callable[[BenchRow], None] | None = None) -> list[BenchRow]:
    """Score every method in ``methods`` (registered names, or ``(name, options)``) with every
    metric in ``metrics`` (registered names; ``metric_options[name]`` their options) on
    ``inputs`` for ``target`` (resolved once on the clean outputs). ``labels`` (one per input)
    are needed for the localisation metrics (mosaics). ``value_range``: the model's input domain,
    given to every metric that perturbs with noise and every method that does (their perturbed
    inputs are clipped to it).
    A method or metric that does not apply to the model (it raises :class:`InvalidInputError`,
    e.g. Grad-CAM without a conv layer) gets empty cells whose ``note`` says why
    (``skip_inapplicable=False``: the error is raised). Returns one :class:`BenchRow` per cell,
    method-major; ``on_row`` sees each as it is done."""
    x = check_inputs(inputs)
    specs = [_method_spec(m) for m in methods]
    if not specs or not metrics:
        raise InvalidInputError("give at least one method and one metric")
    _check_names([name for name, _ in specs], EXPLAINERS, "method")
    _check_names(list(metrics), METRICS, "metric")
    metric_options = dict(metric_options or {})
    _check_names(list(metric_options), METRICS, "metric in metric_options")
    local = [m for m in metrics if m in LOCALISATION_METRICS]
    if local and (labels is None or not isinstance(labels, torch.Tensor) or labels.shape != (len(x),)):
        raise InvalidInputError(f"{', '.join(local)} score 2 x 2 mosaics and need labels, one per "
                                f"input ({len(x)})")
    metric_fns = {name: create_metric(name, **metric_options.get(name, {})) for name in metrics}
    with torch.no_grad():
        resolved = resolve_target(model(x), target)
    mosaics = mosaic_batch(x, labels, n_mosaics, seed) if local else None
    rows = []
    for name, options in specs:
        if value_range is not None and getattr(EXPLAINERS.get(name), "accepts_value_range", False):
            options = {"value_range": value_range, **options}  # noisy copies stay in the domain
        t0 = time.perf_counter()
        try:
            explainer = create_explainer(name, model, **options)
            attributions = explainer.attribute(x, target=resolved)
            mosaic_attr = explainer.attribute(mosaics[0], target=mosaics[2]) if mosaics else None
        except InvalidInputError as e:  # e.g. Grad-CAM on a model without a conv layer
            if not skip_inapplicable:
                raise
            for metric in metrics:
                row = BenchRow(name, metric, math.nan, math.nan, 0, 0,
                               bool(metric_fns[metric].higher_is_better), 0.0, 0.0, options,
                               note=" ".join(str(e).split()))
                rows.append(row)
                if on_row is not None:
                    on_row(row)
            continue
        attribution_seconds = time.perf_counter() - t0
        for metric in metrics:
            fn = metric_fns[metric]
            kwargs = {}
            parameters = inspect.signature(fn.func).parameters
            if _EXPLAINER_METRICS_KEY in parameters:
                kwargs = {"explainer": name, "explainer_options": options}
            if value_range is not None and "value_range" in parameters and "value_range" not in fn.keywords:
                kwargs["value_range"] = value_range
            t1 = time.perf_counter()
            note = None
            try:
                if metric in LOCALISATION_METRICS:
                    scores = fn(model, mosaics[0], mosaic_attr, mosaics[2], mask=mosaics[1], **kwargs)
                else:
                    scores = fn(model, x, attributions, resolved, **kwargs)
                mean, sem, n, n_nan = summarise_scores(scores)
            except InvalidInputError as e:  # e.g. nothing to randomise in this model
                if not skip_inapplicable:
                    raise
                mean, sem, n, n_nan, note = math.nan, math.nan, 0, 0, " ".join(str(e).split())
            row = BenchRow(name, metric, mean, sem, n, n_nan, bool(fn.higher_is_better),
                           round(attribution_seconds, 4), round(time.perf_counter() - t1, 4),
                           options, note)
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows
