"""Shared machinery of the metrics: the registry, input checks, seeded draws, perturbation
baselines, chunked forwards of perturbed copies and explanations of many inputs.

A metric perturbs ``n`` copies of a batch ``x (B, ...)``: copies are built for every sample at
once, ``m = max(1, batch_size // B)`` at a time (``(m, B, ...)``, row ``j * B + b`` is copy ``j`` of
sample ``b``), and the model sees at most ``batch_size`` rows per call.
"""

from __future__ import annotations

import math
from typing import Any, Callable, ContextManager, Iterator, Union

import torch
from torch import nn

from pellucid._registry import Registry
from pellucid._rng import seeded_global_rng
from pellucid.data.validation import check_model_input, check_value_range
from pellucid.errors import InputTypeError, InvalidInputError, UnknownNameError
from pellucid.explain._guard import warn_if_training
from pellucid.explain.base import Explainer, check_inputs, model_lock, preserved_state
from pellucid.explain.methods import EXPLAINERS, create_explainer
from pellucid.explain.targets import (Target, TargetFn, resolve_target, select_target, slice_target,
                                      tile_target)

__all__ = ["BASELINE_NAMES", "METRICS", "Baseline", "ExplainFn", "Scorer", "Seed", "UnknownOptionError",
           "baseline_draws", "check_batch", "check_count", "clip_to_range", "check_draws", "check_positive", "chunks",
           "explain_fn", "explain_rows", "lookup", "make_generator", "rand", "randn", "random_subsets",
           "register", "result_dtype", "seeded", "stat_dtype", "take_draws"]

METRICS: Registry[Callable[..., Any]] = Registry("metric")

Seed = Union[int, torch.Generator]
Baseline = Union[float, torch.Tensor, str]
ExplainFn = Callable[[nn.Module, torch.Tensor, Target], torch.Tensor]

BASELINE_NAMES = ("black", "white", "mean", "uniform")
_DRAW_BLOCK = 1 << 24  # random keys drawn per block when sampling subsets (memory bound)


class UnknownOptionError(UnknownNameError, InvalidInputError):
    """An unknown name for a metric, similarity, baseline or order."""


def register(name: str, summary: str, higher_is_better: bool) -> Callable:
    """Register a metric under ``name`` and record which direction is better."""

    def add(fn: Callable) -> Callable:
        fn.higher_is_better = higher_is_better
        return METRICS.register(name, summary)(fn)

    return add


def lookup(registry: Registry, name: Any, what: str, allow_function: bool = True) -> Any:
    """``registry.get(name)`` (a function passes through when allowed) with an error that is also
    an :class:`InvalidInputError`."""
    if allow_function and callable(name):
        return name
    try:
        return registry.get(name)
    except (UnknownNameError, TypeError):
        alternative = " (or pass a function)" if allow_function else ""
        raise UnknownOptionError(f"unknown {what} {name!r}; known: {', '.join(registry)}"
                                 f"{alternative}") from None


# --------------------------------------------------------------------------- checks

def clip_to_range(x: torch.Tensor, value_range: tuple[float, float] | None) -> torch.Tensor:
    """``x`` clipped to ``value_range = (lo, hi)`` (``None``: unchanged); a bad range is refused."""
    checked = check_value_range(value_range)
    return x if checked is None else x.clamp(*checked)


def check_batch(inputs: torch.Tensor, attributions: torch.Tensor) -> None:
    """Finite float ``inputs (B, ...)`` and ``attributions`` of the same shape and device."""
    check_inputs(inputs)
    if not isinstance(attributions, torch.Tensor):
        raise InputTypeError(f"attributions must be a torch.Tensor, got {type(attributions).__name__}")
    if attributions.shape != inputs.shape:
        raise InvalidInputError(f"attributions have shape {tuple(attributions.shape)} but inputs "
                                f"{tuple(inputs.shape)}; pass one attribution per input element "
                                "(channel-summed maps: a.expand_as(inputs))")
    if not attributions.is_floating_point():
        raise InputTypeError(f"attributions must be floating point, got dtype {attributions.dtype}")
    if attributions.device != inputs.device:
        raise InvalidInputError(f"attributions are on {attributions.device} but inputs on "
                                f"{inputs.device}; move them with a.to(inputs.device)")
    if not bool(torch.isfinite(attributions).all()):
        raise InvalidInputError("attributions contain NaN or inf; replace them with "
                                "torch.nan_to_num(a) or fix the explainer")


def check_count(value: Any, name: str, minimum: int = 1) -> int:
    """An integer ``>= minimum`` (bools are rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_positive(value: Any, name: str) -> float:
    """A finite number ``> 0``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= 0:
        raise InvalidInputError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_draws(draws: Any, shape: tuple[int, ...], name: str, like: torch.Tensor) -> torch.Tensor:
    """User-given draws ``(n, *shape)``: finite, floating, on ``like``'s device, in its dtype."""
    if not isinstance(draws, torch.Tensor) or not draws.is_floating_point():
        dims = ", ".join(map(str, shape))
        raise InputTypeError(f"{name} must be a floating-point tensor (n, {dims})")
    if draws.dim() != len(shape) + 1 or tuple(draws.shape[1:]) != shape or draws.shape[0] < 1:
        raise InvalidInputError(f"{name} must have shape (n, {', '.join(map(str, shape))}), one draw "
                                f"per row, got {tuple(draws.shape)}")
    if not bool(torch.isfinite(draws).all()):
        raise InvalidInputError(f"{name} contain NaN or inf")
    return draws.to(device=like.device, dtype=like.dtype)


def stat_dtype(device: torch.device) -> torch.dtype:
    """Statistics are accumulated in float64 (float32 where the device has no float64)."""
    return torch.float32 if device.type == "mps" else torch.float64


def result_dtype(x: torch.Tensor) -> torch.dtype:
    """Scores are returned in the inputs' dtype, at least float32."""
    return torch.promote_types(x.dtype, torch.float32)


# --------------------------------------------------------------------------- seeded draws

def make_generator(seed: Seed, device: torch.device) -> torch.Generator:
    """``seed`` itself if it is a generator, else a new generator on ``device`` seeded with it."""
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidInputError(f"seed must be an int or a torch.Generator, got {seed!r}")
    return torch.Generator(device=device).manual_seed(seed)


def rand(shape: tuple[int, ...], gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """``U[0, 1)`` draws, made on the generator's device, returned on ``like``'s device and dtype."""
    return torch.rand(shape, generator=gen, device=gen.device, dtype=torch.float32).to(like.device, like.dtype)


def randn(shape: tuple[int, ...], gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """``N(0, 1)`` draws, made on the generator's device, returned like :func:`rand`."""
    return torch.randn(shape, generator=gen, device=gen.device, dtype=torch.float32).to(like.device, like.dtype)


def random_subsets(n: int, batch: int, features: int, size: int, gen: torch.Generator,
                   device: torch.device) -> torch.Tensor:
    """``(n, B, size)`` feature indices: for every draw and sample a uniform subset without
    replacement (the ``size`` largest of ``features`` uniform keys)."""
    block = max(1, _DRAW_BLOCK // (batch * features))
    parts = []
    for lo, hi in chunks(n, block):
        keys = torch.rand((hi - lo, batch, features), generator=gen, device=gen.device, dtype=torch.float32)
        parts.append(keys.topk(size, dim=-1, sorted=False).indices)
    return torch.cat(parts).to(device)


# --------------------------------------------------------------------------- baselines

def baseline_draws(baseline: Baseline, x: torch.Tensor, n_draws: int, gen: torch.Generator | None
                   ) -> torch.Tensor:
    """Replacement values for perturbed features, ``(S, B or 1, D or 1)`` with ``D = x[0].numel()``.

    * a number: that value (``S = 1``);
    * ``"black"`` / ``"white"`` / ``"mean"``: each sample's min / max / mean (``S = 1``);
    * ``"uniform"``: ``U[0, 1)`` for every element of every draw (``S = n_draws``);
    * a tensor broadcastable to ``x``: one baseline image per sample (``S = 1``);
    * a tensor ``(n_draws, *x.shape)``: one baseline image per draw and sample (``S = n_draws``).
    """
    flat = x.flatten(1)  # (B, D)
    if isinstance(baseline, str):
        if baseline == "uniform":
            if gen is None:
                raise InvalidInputError("a 'uniform' baseline needs a seed")
            return rand((n_draws, *flat.shape), gen, flat)
        stats = {"black": torch.amin, "white": torch.amax, "mean": torch.mean}
        if baseline not in stats:
            raise UnknownOptionError(f"unknown baseline {baseline!r}; known: "
                                     f"{', '.join(BASELINE_NAMES)}, a number or a tensor")
        return stats[baseline](flat, 1).view(1, -1, 1)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        if not math.isfinite(baseline):
            raise InvalidInputError(f"baseline must be finite, got {baseline!r}")
        return flat.new_full((1, 1, 1), float(baseline))
    if not isinstance(baseline, torch.Tensor):
        raise InvalidInputError(f"baseline must be a number, one of {', '.join(BASELINE_NAMES)} or a "
                                f"tensor, got {type(baseline).__name__}")
    if baseline.dim() == x.dim() + 1:
        if baseline.shape[0] != n_draws:
            raise InvalidInputError(f"baseline holds {baseline.shape[0]} draws but the metric makes "
                                    f"{n_draws}; pass (n_draws, *inputs.shape) or one baseline image")
        return check_draws(baseline, tuple(x.shape), "baseline draws", flat).flatten(2)
    if not bool(torch.isfinite(baseline).all()):
        raise InvalidInputError("baseline contains NaN or inf")
    try:
        image = baseline.to(flat).expand_as(x)
    except RuntimeError:
        raise InvalidInputError(f"baseline has shape {tuple(baseline.shape)}; pass one broadcastable "
                                f"to the inputs {tuple(x.shape)} or one per draw (n, *inputs.shape)"
                                ) from None
    return image.reshape(1, *flat.shape)


def take_draws(base: torch.Tensor, draw: torch.Tensor | slice) -> torch.Tensor:
    """The baseline values of the given draws (all draws share a single one when ``S = 1``)."""
    return base[draw] if base.shape[0] > 1 else base


# --------------------------------------------------------------------------- forwards

def chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    """``(lo, hi)`` ranges covering ``0..n`` in steps of ``size``."""
    for lo in range(0, n, size):
        yield lo, min(n, lo + size)


class Scorer:
    """The explained score ``f(x)`` of a batch and of many perturbed copies of it.

    The target is resolved once on the clean batch (``None``: each sample's top class now), so
    every copy scores the same class. With ``softmax`` the score is a probability. A callable
    target is applied to the outputs of ``m * B`` rows at a time and must work row by row.
    """

    def __init__(self, model: nn.Module, inputs: torch.Tensor, target: Target, batch_size: int,
                 softmax: bool = False) -> None:
        if not isinstance(model, nn.Module):
            raise InvalidInputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_model_input(model, inputs, name="inputs")
        warn_if_training(model, "the metric's forwards are then random or batch dependent")
        self.model, self.inputs = model, inputs
        self.batch_size = check_count(batch_size, "batch_size")
        self.softmax = softmax
        output = self.forward(inputs)
        self.target: torch.Tensor | TargetFn = resolve_target(output, target)
        self.clean = self.select(output, self.target)  # (B,)
        self.n_outputs = output.flatten(1).shape[1]

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """Model outputs of ``rows``, ``batch_size`` rows per call, without autograd."""
        with model_lock(self.model), preserved_state(self.model), torch.no_grad():
            outs = [self.model(rows[lo:hi]) for lo, hi in chunks(len(rows), self.batch_size)]
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def select(self, output: torch.Tensor, target: torch.Tensor | TargetFn) -> torch.Tensor:
        if self.softmax and isinstance(output, torch.Tensor):
            output = output.flatten(1).softmax(1)
        return select_target(output, target)

    def rows_target(self, copies: int) -> torch.Tensor | TargetFn:
        """The target of ``copies * B`` rows laid out copy-major."""
        return tile_target(self.target, copies) if callable(self.target) else self.target.repeat(copies)

    def copies(self, build: Callable[[int, int], torch.Tensor], n: int) -> torch.Tensor:
        """Scores ``(n, B)`` of the copies ``build(lo, hi) -> (hi - lo, B, ...)``."""
        batch = len(self.inputs)
        per = max(1, self.batch_size // batch)
        scores = []
        for lo, hi in chunks(n, per):
            rows = build(lo, hi).reshape(-1, *self.inputs.shape[1:])  # (m * B, ...)
            scores.append(self.select(self.forward(rows), self.rows_target(hi - lo)))
        return torch.cat(scores).view(n, batch)


# --------------------------------------------------------------------------- explanations

def explain_fn(explainer: str | Explainer | ExplainFn, options: dict | None = None) -> ExplainFn:
    """``f(model, inputs, target) -> attributions`` from a registered explainer name (built with
    ``options`` for each model it is called with), an :class:`Explainer` (its own model only) or
    such a function."""
    options = dict(options or {})
    if isinstance(explainer, str):
        built: dict[str, Any] = {}

        def by_name(model: nn.Module, x: torch.Tensor, target: Target) -> torch.Tensor:
            if built.get("model") is not model:
                built.update(model=model, explainer=create_explainer(explainer, model, **options))
            return built["explainer"].attribute(x, target)

        lookup(EXPLAINERS, explainer, "explainer")
        return by_name
    if isinstance(explainer, Explainer):
        def bound(model: nn.Module, x: torch.Tensor, target: Target) -> torch.Tensor:
            if model is not explainer.model:
                raise InvalidInputError(f"{explainer!r} explains another model; pass the explainer's "
                                        "registered name or a function f(model, inputs, target)")
            return explainer.attribute(x, target)

        return bound
    if callable(explainer) and not isinstance(explainer, nn.Module):
        return explainer
    raise InvalidInputError(f"explainer must be a registered name, an Explainer or a function "
                            f"f(model, inputs, target) -> attributions, got {type(explainer).__name__}")


def explain_rows(fn: ExplainFn, model: nn.Module, rows: torch.Tensor, target: torch.Tensor | TargetFn,
                 batch_size: int) -> torch.Tensor:
    """Attributions of ``rows`` (``batch_size`` rows per call; ``target`` has one entry per row)."""
    out = []
    for lo, hi in chunks(len(rows), batch_size):
        x = rows[lo:hi]
        a = fn(model, x, slice_target(target, lo, hi) if callable(target) else target[lo:hi])
        if not isinstance(a, torch.Tensor) or a.shape != x.shape:
            got = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
            raise InvalidInputError(f"the explainer returned {got} for inputs {tuple(x.shape)}; it "
                                    "must return one attribution per input element")
        out.append(a.detach())
    return torch.cat(out) if len(out) > 1 else out[0]


def seeded(seed: int, model: nn.Module) -> ContextManager[None]:
    """Torch's default generators (CPU and the model's CUDA devices) seeded with ``seed`` inside,
    restored on exit (one seeded block at a time in the process: :mod:`pellucid._rng`)."""
    return seeded_global_rng(seed, [p.device for p in model.parameters()])
