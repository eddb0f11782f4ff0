"""Baseline attribution methods from Captum, behind pellucid's one call shape.

``Method(model, ...).attribute(inputs, target=...)`` for Input x Gradient, Integrated Gradients,
SmoothGrad, GradientSHAP, DeepLIFT, Guided Backprop, Grad-CAM and Guided Grad-CAM, with the
guarantees of :class:`~pellucid.explain.base.Explainer`: inputs are never modified, the model's
parameters, buffers, train/eval flags, hooks and attributes are as before after every call (also on
errors), the model's lock is held, and every kind of target works. Attributions are signed, as
Captum returns them, with the inputs' shape.

Targets are written once (:class:`_TargetScore`): the model is wrapped into a module that returns
one score per row and Captum is called with ``target=None``. A ``None`` or index target is resolved
once on the clean inputs, so every scaled, noisy or baseline copy is scored for the same class. Each
row carries its sample's index as an additional forward argument, which Captum expands exactly as
it expands the inputs, so per-sample targets and target functions see the right rows.

The attribution also serves as the ascent direction of :func:`~pellucid.explain.counterfactual`
(:meth:`CaptumExplainer.gradient`).

Captum's hook-based methods (DeepLIFT, Guided Backprop, Guided Grad-CAM) only reach ``nn.Module``
nonlinearities: functional calls (``F.relu``, ``torch.relu``, ``x.relu()``) keep their plain
gradient. A ``torch.fx`` trace finds such calls when the explainer is built and a
:class:`HookCoverageWarning` names them. Captum is imported on first use (it costs about 0.3 s).
"""

from __future__ import annotations

import contextlib
import math
import re
import reprlib
import warnings
from collections import Counter
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from pellucid._rng import seeded_global_rng
from pellucid._warnings import warn
from pellucid.data.validation import check_model_input, check_value_range
from pellucid.errors import InvalidInputError
from pellucid.explain._guard import ThreadSafeTracer, warn_if_training
from pellucid.explain.base import Explainer, check_inputs, model_lock, preserved_state
from pellucid.explain.methods import EXPLAINERS
from pellucid.explain.targets import Target, TargetFn, resolve_target, scored_module, select_target

__all__ = ["CaptumExplainer", "DeepLift", "GradCam", "GradientShap", "GuidedBackprop", "GuidedGradCam",
           "HookCoverageWarning", "InputXGradient", "IntegratedGradients", "SmoothGrad"]


class HookCoverageWarning(UserWarning):
    """A hook-based method cannot reach some nonlinearities of the model (functional calls, layer
    types it has no rule for): the attribution uses the plain gradient there."""


# options of other explainers that create_explainer passes on to every method (ignored here)
_OTHER_OPTIONS = frozenset({"temperature", "gate", "detach_pool_weights", "replace_maxpool"})
_HOOK_TABLES = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs",
                "_forward_hooks_always_called")
# Captum's per-call notices (hooks set and removed again; inputs made to require grad)
_CAPTUM_NOTICES = (r"Setting forward, backward hooks", r"Setting backward hooks on ReLU",
                   r"Input Tensor \d+ did not already require gradients",
                   r"Couldn't appropriately interpolate GradCAM")
_CAPTUM_MODULES = r"captum\."
_CAPTUM_FILTERS = tuple(("ignore", re.compile(m, re.I), Warning, re.compile(_CAPTUM_MODULES), 0)
                        for m in _CAPTUM_NOTICES)  # as warnings.filterwarnings stores them
# Captum's "riemann_trapezoid" is left out: its weights sum to (n - 1) / n, not 1 (captum 0.9)
_IG_METHODS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle")
_INTERPOLATE_MODES = {3: ("nearest", "area", "linear"), 4: ("nearest", "area", "bilinear", "bicubic"),
                      5: ("nearest", "area", "trilinear")}


def _captum():
    """``captum.attr``, imported on first use."""
    import captum.attr

    return captum.attr


# ----------------------------------------------------------------------------------------------
# One target mechanism for every method
# ----------------------------------------------------------------------------------------------

class _TargetScore(nn.Module):
    """``(x, ids) -> (N,)``: row ``r`` of ``model(x)`` scored with the target of sample ``ids[r]``.

    ``target`` is a resolved index tensor ``(B,)`` or a function ``f(output) -> (B,)``; a function
    is applied to each copy of the batch (``B`` rows, in sample order) separately. A hidden-layer
    target scores that layer's features (:func:`~pellucid.explain.targets.scored_module`).
    """

    def __init__(self, model: nn.Module, target: torch.Tensor | TargetFn, batch: int,
                 value_range: tuple[float, float] | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.model = scored_module(model, target)
        self.dtype = dtype  # the inputs' (Captum draws its noise in the default dtype)
        object.__setattr__(self, "target", target)  # never registered as a submodule
        self.batch = batch
        self.value_range = value_range

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if self.dtype is not None:
            x = x.to(self.dtype)
        if self.value_range is not None:  # straight-through clip: the model sees its domain,
            lo, hi = self.value_range     # the gradient passes as if unclipped
            x = x + (x.clamp(lo, hi) - x).detach()
        output = self.model(x)
        if not callable(self.target):
            return select_target(output, self.target[ids])
        if ids.numel() == self.batch and bool((ids == torch.arange(self.batch, device=ids.device)).all()):
            return select_target(output, self.target)
        rows = _copies(ids, self.batch)  # (k, B): rows[j, b] is the j-th row of sample b
        scores = torch.cat([select_target(output[r], self.target) for r in rows])  # (k * B,)
        return scores[torch.argsort(rows.reshape(-1))]  # back to row order


def _copies(ids: torch.Tensor, batch: int) -> torch.Tensor:
    """``(k, B)`` row indices of the ``k`` copies of a batch of ``B`` samples tagged by ``ids``."""
    k, rest = divmod(ids.numel(), batch)
    assert rest == 0 and k > 0, "Captum expands every sample the same number of times"
    return torch.argsort(ids, stable=True).view(batch, k).T


# ----------------------------------------------------------------------------------------------
# Base class
# ----------------------------------------------------------------------------------------------

class CaptumExplainer(Explainer):
    """A Captum method: subclasses implement ``_attribute(forward, x, ids)``, where ``forward`` is
    the model wrapped to return one target score per row and ``ids`` is passed on to Captum as
    ``additional_forward_args=(ids,)``.

    Keyword options of other explainers (``temperature``, ``gate``, ...) are ignored, so that
    :func:`~pellucid.explain.methods.create_explainer` can pass the same options to every method;
    any other unknown option raises :class:`InvalidInputError`.

    ``value_range=(lo, hi)``: every input the model sees (the noisy copies of SmoothGrad and
    GradientSHAP, the interpolation paths) is clipped to it, with the gradient passed straight
    through the clip; for models that refuse inputs outside their domain (images in [0, 1]).
    """

    name = "captum"
    accepts_value_range = True

    def __init__(self, model: nn.Module, value_range: tuple[float, float] | None = None,
                 **options) -> None:
        super().__init__(model)
        self.value_range = check_value_range(value_range)
        unknown = sorted(set(options) - _OTHER_OPTIONS)
        if unknown:
            raise InvalidInputError(f"{self.name} has no option {', '.join(map(repr, unknown))}; see "
                                    f"help(pellucid.explain.{type(self).__name__})")

    def attribute(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
        """The method's attribution for ``target``, same shape as ``inputs``."""
        attribution, _, _ = self.gradient(check_inputs(inputs), target)
        return attribution

    def gradient(self, x: torch.Tensor, target: Target
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | TargetFn]:
        """``(attribution, score (B,), resolved target)`` for already checked inputs ``x``: the
        attribution takes the place of the gradient, so :func:`~pellucid.explain.counterfactual`
        ascends along this method's explanation. A ``None`` or index target is resolved on ``x``."""
        check_model_input(self.model, x, name="inputs")
        warn_if_training(self.model)
        _silence_captum_notices()
        with model_lock(self.model), preserved_state(self.model), _no_leftovers(self.model):
            with torch.no_grad():
                output = scored_module(self.model, target)(x)
                resolved = resolve_target(output, target)  # fixed for every copy Captum makes
                score = select_target(output, resolved)
            forward = _TargetScore(self.model, resolved, len(x), self.value_range, x.dtype)
            ids = torch.arange(len(x), device=x.device)
            leaf = x.detach().clone().requires_grad_(True)  # never touch the caller's tensor
            # Captum builds some tensors (integrated gradients' step sizes) on the default device:
            # make that the inputs' device for the call, whatever default the caller has set
            with torch.enable_grad(), torch.device(x.device):
                attribution = self._attribute(forward, leaf, ids)
        return attribution.detach().to(x.dtype), score, resolved

    def _attribute(self, forward: _TargetScore, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@contextlib.contextmanager
def _no_leftovers(model: nn.Module) -> Iterator[None]:
    """Remove every hook and attribute added to ``model``'s modules inside the block (also on errors).

    Captum's DeepLIFT stores ``module.input``/``module.output`` and deletes them only in the backward
    pass, which skips modules that do not reach the target.
    """
    before = [(m, set(vars(m)), {k: set(getattr(m, k)) for k in _HOOK_TABLES if hasattr(m, k)})
              for m in model.modules()]
    try:
        yield
    finally:
        for module, attributes, hooks in before:
            for name in set(vars(module)) - attributes:
                del module.__dict__[name]
            for table_name, keys in hooks.items():
                table = getattr(module, table_name)
                for key in set(table) - keys:
                    del table[key]


def _silence_captum_notices() -> None:
    """Ignore Captum's per-call notices process-wide: the filters match these messages raised from
    Captum's own modules only, and are kept at the front of the filter list (moved there again if
    filters were added since, so a caller's ``simplefilter("always")`` does not bring them back).

    A ``warnings.catch_warnings`` block per call would last only the call, but it swaps the
    process-wide filter list and restores what it saw on entry: blocks in two threads, left out of
    order, leave each other's filters installed for good."""
    if warnings.filters[:len(_CAPTUM_FILTERS)] == list(_CAPTUM_FILTERS):
        return  # unchanged: no filter mutation (which would reset "once" registries)
    for message in reversed(_CAPTUM_NOTICES):  # each goes to the front: keep the tuple's order
        warnings.filterwarnings("ignore", message=message, module=_CAPTUM_MODULES)


# ----------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------

def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{name} must be a positive integer, got {reprlib.repr(value)}")
    return value


def _stdev(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0:
        raise InvalidInputError(f"stdevs (the noise standard deviation) must be a finite number >= 0, "
                                f"got {reprlib.repr(value)}")
    return float(value)


def _seed(value: object) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or not 0 <= value < 2 ** 32):
        raise InvalidInputError(f"seed must be None or an integer in [0, 2**32), got {reprlib.repr(value)}")
    return value


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InvalidInputError(f"{name} must be one of {', '.join(allowed)}; got {reprlib.repr(value)}")
    return value


def _ig_method(value: object) -> str:
    if value == "riemann_trapezoid":
        raise InvalidInputError("method 'riemann_trapezoid' is not offered: Captum's trapezoid weights "
                                "sum to (n_steps - 1) / n_steps, not 1; use 'gausslegendre' or "
                                "'riemann_middle'")
    return _choice("method", value, _IG_METHODS)


def _as_tensor(name: str, value: object, x: torch.Tensor) -> torch.Tensor:
    try:
        t = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    except (TypeError, ValueError, RuntimeError) as e:
        raise InvalidInputError(f"{name} must be a number or a tensor, got {type(value).__name__}") from e
    if not bool(torch.isfinite(t).all()):
        raise InvalidInputError(f"{name} contains NaN or inf")
    return t


def _baseline(value: object, x: torch.Tensor) -> torch.Tensor:
    """The reference input x' with ``x``'s shape: zeros (``None``), a number, or a broadcastable tensor."""
    if value is None:
        return torch.zeros_like(x)
    t = _as_tensor("baseline", value, x)
    if t.dim() > x.dim() or any(a not in (1, b) for a, b in zip(t.shape[::-1], x.shape[::-1])):
        raise InvalidInputError(f"baseline has shape {tuple(t.shape)}; it must broadcast to the inputs' "
                                f"shape {tuple(x.shape)} (one per sample, one for all, or a number)")
    return t.expand_as(x).clone()


def _baseline_distribution(value: object, x: torch.Tensor) -> torch.Tensor:
    """Reference inputs ``(N, *x.shape[1:])`` drawn from by GradientSHAP: zeros (``None``), a number,
    one reference ``x.shape[1:]`` or several."""
    if value is None:
        return torch.zeros_like(x[:1])
    t = _as_tensor("baselines", value, x)
    if t.dim() == 0:
        return t.expand_as(x[:1]).clone()
    t = t.unsqueeze(0) if t.dim() == x.dim() - 1 else t
    if t.dim() != x.dim() or t.shape[1:] != x.shape[1:] or len(t) == 0:
        shape = tuple(x.shape[1:])
        raise InvalidInputError(f"baselines has shape {tuple(t.shape)}; pass references of shape "
                                f"(N, {', '.join(map(str, shape))}) or one of shape {shape}")
    return t


# ----------------------------------------------------------------------------------------------
# What Captum's hooks reach
# ----------------------------------------------------------------------------------------------

_RELU_CALLS = {F.relu: "F.relu", torch.relu: "torch.relu", torch.relu_: "torch.relu_",
               "relu": "Tensor.relu", "relu_": "Tensor.relu_"}
_NONLINEAR_CALLS = {torch.sigmoid: "torch.sigmoid", torch.tanh: "torch.tanh", F.tanh: "F.tanh",
                    F.softmax: "F.softmax", torch.softmax: "torch.softmax", F.log_softmax: "F.log_softmax",
                    F.max_pool1d: "F.max_pool1d", F.max_pool2d: "F.max_pool2d",
                    torch.max_pool2d: "torch.max_pool2d", F.max_pool3d: "F.max_pool3d",
                    F.adaptive_max_pool2d: "F.adaptive_max_pool2d", F.elu: "F.elu",
                    F.leaky_relu: "F.leaky_relu", F.gelu: "F.gelu", F.silu: "F.silu", F.mish: "F.mish",
                    F.softplus: "F.softplus", F.relu6: "F.relu6", F.hardswish: "F.hardswish",
                    "sigmoid": "Tensor.sigmoid", "tanh": "Tensor.tanh", "softmax": "Tensor.softmax"}
# nonlinear layers DeepLIFT has no rule for (their plain gradient is used)
_DEEPLIFT_UNREACHED = (nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.PReLU,
                       nn.SELU, nn.CELU, nn.GLU, nn.LogSoftmax, nn.Softmin, nn.Softmax2d,
                       nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LayerNorm,
                       nn.GroupNorm, nn.MultiheadAttention)


def _call_sites(model: nn.Module) -> tuple[Counter, Counter] | None:
    """``(functional call kinds, calls per module path)`` of one forward, or None if torch.fx
    cannot trace the model."""
    try:
        with preserved_state(model):
            graph = ThreadSafeTracer().trace(model)
    except Exception:  # fx raises TraceError, TypeError, RuntimeError, user errors, ...
        return None
    functions, modules = Counter(), Counter()
    for node in graph.nodes:
        if node.op in ("call_function", "call_method"):
            functions[node.target] += 1
        elif node.op == "call_module":
            modules[node.target] += 1
    return functions, modules


def _unreached_relus(model: nn.Module, sites: tuple[Counter, Counter] | None) -> list[str]:
    """Functional ReLU calls (``"2 F.relu"``), or a note if the model cannot be traced and has no
    ``nn.ReLU`` module at all."""
    if sites is None:
        if any(isinstance(m, nn.ReLU) for m in model.modules()):
            return []
        return ["any functional relu (the forward cannot be traced by torch.fx and the model has no "
                "nn.ReLU module)"]
    return _labelled(sites[0], _RELU_CALLS)


def _labelled(functions: Counter, table: dict) -> list[str]:
    return [f"{n} {table[f]}" for f, n in functions.items() if f in table]


def _warn_unreached(method: str, rule: str, unreached: list[str]) -> None:
    if unreached:
        warn(f"{method}: Captum's hooks only reach nn.Module layers, so these keep the plain "
             f"gradient instead of {rule}: {', '.join(unreached)}; build the model with "
             "nn.ReLU modules (method 'pullback' reaches functional calls too)", HookCoverageWarning)


# ----------------------------------------------------------------------------------------------
# Methods
# ----------------------------------------------------------------------------------------------

@EXPLAINERS.register("input-x-gradient")
class InputXGradient(CaptumExplainer):
    """Input x Gradient: ``x * d f_t(x) / dx`` elementwise (Captum ``InputXGradient``).

    Shrikumar, Greenside, Shcherbina, Kundaje 2016, "Not just a black box: learning important
    features through propagating activation differences", arXiv:1605.01713.
    """

    name = "input-x-gradient"

    def _attribute(self, forward, x, ids):
        return _captum().InputXGradient(forward).attribute(x, additional_forward_args=(ids,))


@EXPLAINERS.register("integrated-gradients")
class IntegratedGradients(CaptumExplainer):
    """Integrated Gradients: ``(x - x') * int_0^1 d f_t(x' + a (x - x')) / dx da`` (Captum
    ``IntegratedGradients``).

    The integral is an ``n_steps``-point quadrature, ``method`` ``"gausslegendre"`` (Captum's
    default) or ``"riemann_left"``/``"riemann_right"``/``"riemann_middle"`` (Captum's
    ``"riemann_trapezoid"`` is refused: its weights sum to ``(n_steps - 1) / n_steps``). Captum
    keeps the quadrature weights (and Riemann nodes) in float32, so even a float64 model's
    attribution carries a relative error of about 1e-7. ``baseline`` x' is zeros (``None``), a
    number, or a tensor broadcastable to the inputs. Completeness: ``sum(attr) -> f_t(x) - f_t(x')``
    as ``n_steps`` grows. One forward of ``n_steps * B`` samples per call.

    Sundararajan, Taly, Yan 2017, "Axiomatic attribution for deep networks", ICML, arXiv:1703.01365.
    """

    name = "integrated-gradients"

    def __init__(self, model: nn.Module, baseline: float | torch.Tensor | None = None,
                 n_steps: int = 32, method: str = "gausslegendre", **options) -> None:
        super().__init__(model, **options)
        self.baseline = baseline
        self.method = _ig_method(method)
        self.n_steps = _count("n_steps", n_steps)
        if self.method != "gausslegendre" and self.n_steps < 2:
            raise InvalidInputError(f"n_steps must be at least 2 for {self.method}, got {n_steps}")

    def _attribute(self, forward, x, ids):
        return _captum().IntegratedGradients(forward).attribute(
            x, baselines=_baseline(self.baseline, x), n_steps=self.n_steps, method=self.method,
            additional_forward_args=(ids,))


@EXPLAINERS.register("smoothgrad")
class SmoothGrad(CaptumExplainer):
    """SmoothGrad: ``(1/n) sum_i d f_t(x + e_i) / dx``, ``e_i ~ N(0, stdevs^2 I)``, ``n = nt_samples``
    (signed gradients: Captum ``NoiseTunnel(Saliency)``, ``nt_type="smoothgrad"``, ``abs=False``).

    ``stdevs`` is absolute (the paper uses 10-20% of the input range). The noise is drawn from
    torch's global generator seeded with ``seed`` inside a fork, so a call is reproducible and
    leaves the global generator as it was; ``seed=None`` draws from the global generator unseeded.

    Smilkov, Thorat, Kim, Viegas, Wattenberg 2017, "SmoothGrad: removing noise by adding noise",
    arXiv:1706.03825.
    """

    name = "smoothgrad"

    def __init__(self, model: nn.Module, nt_samples: int = 25, stdevs: float = 0.15,
                 seed: int | None = 0, **options) -> None:
        super().__init__(model, **options)
        self.nt_samples = _count("nt_samples", nt_samples)
        self.stdevs = _stdev(stdevs)
        self.seed = _seed(seed)

    def _attribute(self, forward, x, ids):
        attr = _captum()
        with seeded_global_rng(self.seed, [x.device], numpy=True):
            return attr.NoiseTunnel(attr.Saliency(forward)).attribute(
                x, nt_type="smoothgrad", nt_samples=self.nt_samples, stdevs=self.stdevs, abs=False,
                additional_forward_args=(ids,))


@EXPLAINERS.register("gradient-shap")
class GradientShap(CaptumExplainer):
    """GradientSHAP (expected gradients): ``(1/n) sum_i (x + e_i - x'_i) * d f_t(x'_i + a_i (x + e_i -
    x'_i)) / dx`` with ``x'_i`` drawn uniformly from ``baselines``, ``a_i ~ U(0, 1)`` and
    ``e_i ~ N(0, stdevs^2 I)``, ``n = n_samples`` (Captum ``GradientShap``).

    ``baselines`` is zeros (``None``), a number, one reference input or several ``(N, ...)``. The
    draws use torch's and NumPy's global generators, seeded with ``seed`` and restored afterwards
    (``seed=None``: unseeded, not restored).

    Lundberg, Lee 2017, "A unified approach to interpreting model predictions", NeurIPS,
    arXiv:1705.07874; Erion et al. 2021, "Improving performance of deep learning models with
    axiomatic attribution priors and expected gradients", Nature Machine Intelligence.
    """

    name = "gradient-shap"

    def __init__(self, model: nn.Module, baselines: float | torch.Tensor | None = None,
                 n_samples: int = 16, stdevs: float = 0.0, seed: int | None = 0, **options) -> None:
        super().__init__(model, **options)
        self.baselines = baselines
        self.n_samples = _count("n_samples", n_samples)
        self.stdevs = _stdev(stdevs)
        self.seed = _seed(seed)

    def _attribute(self, forward, x, ids):
        with seeded_global_rng(self.seed, [x.device], numpy=True):
            return _captum().GradientShap(forward).attribute(
                x, baselines=_baseline_distribution(self.baselines, x), n_samples=self.n_samples,
                stdevs=self.stdevs, additional_forward_args=(ids,))


@EXPLAINERS.register("deeplift")
class DeepLift(CaptumExplainer):
    """DeepLIFT (Rescale rule): ``(x - x') * m``, ``m`` the gradient of ``f_t`` with each
    nonlinearity's derivative replaced by the secant ``(g(z) - g(z')) / (z - z')`` between the
    pre-activations at the input and at the baseline (Captum ``DeepLift``; max pools and softmax by
    Captum's own rules). Summation to delta: ``sum(attr) = f_t(x) - f_t(x')``.

    Only ``nn.Module`` layers of the types Captum has a rule for are reached (``nn.ReLU``, ``ELU``,
    ``LeakyReLU``, ``Sigmoid``, ``Tanh``, ``Softplus``, ``MaxPool1d/2d/3d``, ``Softmax``), each
    called once per forward: a module called twice raises :class:`InvalidInputError`; functional
    calls and other nonlinear layers (GELU, LayerNorm, ...) keep their gradient, and a
    :class:`HookCoverageWarning` names them when the explainer is built (``self.unreached``).
    ``baseline`` x' is zeros (``None``), a number, or a tensor broadcastable to the inputs.

    Shrikumar, Greenside, Kundaje 2017, "Learning important features through propagating
    activation differences", ICML, arXiv:1704.02685.
    """

    name = "deeplift"

    def __init__(self, model: nn.Module, baseline: float | torch.Tensor | None = None,
                 **options) -> None:
        super().__init__(model, **options)
        self.baseline = baseline
        with model_lock(model):
            self.unreached = self._check_layers()
        _warn_unreached(self.name, "the Rescale rule", self.unreached)

    def _check_layers(self) -> list[str]:
        from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

        sites = _call_sites(self.model)
        if sites is not None:
            hooked = {path for path, m in self.model.named_modules() if type(m) in SUPPORTED_NON_LINEAR}
            reused = sorted(path for path, n in sites[1].items() if n > 1 and path in hooked)
            if reused:
                raise InvalidInputError(f"deeplift: module(s) {', '.join(reused)} are called more than once "
                                        "per forward, which Captum's DeepLift cannot handle; give each "
                                        "call its own module")
        layers = Counter(f"nn.{type(m).__name__}" for m in self.model.modules()
                         if isinstance(m, _DEEPLIFT_UNREACHED) or
                         (isinstance(m, tuple(SUPPORTED_NON_LINEAR)) and type(m) not in SUPPORTED_NON_LINEAR))
        functions = [] if sites is None else _labelled(sites[0], _NONLINEAR_CALLS)
        return _unreached_relus(self.model, sites) + functions + [f"{n} {k}" for k, n in layers.items()]

    def _attribute(self, forward, x, ids):
        try:
            return _captum().DeepLift(forward).attribute(x, baselines=_baseline(self.baseline, x),
                                                         additional_forward_args=(ids,))
        except RuntimeError as e:
            if "more than once" not in str(e):
                raise
            raise InvalidInputError("deeplift: a nonlinearity module is called more than once per "
                                    "forward, which Captum's DeepLift cannot handle; give each call "
                                    "its own module") from e


def _relu_coverage(explainer: CaptumExplainer) -> list[str]:
    with model_lock(explainer.model):
        unreached = _unreached_relus(explainer.model, _call_sites(explainer.model))
    _warn_unreached(explainer.name, "the guided ReLU backward", unreached)
    return unreached


@EXPLAINERS.register("guided-backprop")
class GuidedBackprop(CaptumExplainer):
    """Guided Backprop: the input gradient of ``f_t`` where every ReLU passes back only positive
    gradients, ``g_in = relu(g_out * 1[z > 0])`` (Captum ``GuidedBackprop``).

    Only ``nn.ReLU`` modules are reached; functional relu calls keep their plain gradient and a
    :class:`HookCoverageWarning` names them when the explainer is built (``self.unreached``).

    Springenberg, Dosovitskiy, Brox, Riedmiller 2015, "Striving for simplicity: the all
    convolutional net", ICLR workshop, arXiv:1412.6806.
    """

    name = "guided-backprop"

    def __init__(self, model: nn.Module, **options) -> None:
        super().__init__(model, **options)
        self.unreached = _relu_coverage(self)

    def _attribute(self, forward, x, ids):
        return _captum().GuidedBackprop(forward).attribute(x, additional_forward_args=(ids,))


def _layer(model: nn.Module, layer: str | nn.Module | None) -> nn.Module:
    """The module at path ``layer`` (default: the last ``nn.Conv2d`` registered in ``model``)."""
    convs = [(path, m) for path, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise InvalidInputError(f"layer {type(layer).__name__} is not a module of "
                                    f"{type(model).__name__}; pass its path, e.g. {convs[-1][0]!r}"
                                    if convs else "layer is not a module of the model")
        return layer
    if layer is None:
        if not convs:
            raise InvalidInputError(f"{type(model).__name__} has no nn.Conv2d; pass layer='path.to.module' "
                                    "(a module with a (B, K, h, w) output)")
        return convs[-1][1]
    if not isinstance(layer, str):
        raise InvalidInputError(f"layer must be a module path (str), got {type(layer).__name__}")
    try:
        return model.get_submodule(layer)
    except AttributeError:
        raise InvalidInputError(f"{type(model).__name__} has no module {layer!r}; its Conv2d layers: "
                                f"{reprlib.repr([p for p, _ in convs])}") from None


def _check_mode(mode: str, x: torch.Tensor) -> str:
    allowed = _INTERPOLATE_MODES.get(x.dim())
    if allowed is None:
        raise InvalidInputError(f"Grad-CAM needs inputs (B, C, *spatial) with 1 to 3 spatial axes, got "
                                f"shape {tuple(x.shape)}")
    return _choice(f"interpolate_mode for {x.dim() - 2}-d inputs", mode, allowed)


def _upsample(cam: torch.Tensor | tuple, x: torch.Tensor, mode: str) -> torch.Tensor:
    """The layer map ``(B, 1, h, w)`` interpolated to ``x``'s size and broadcast over its channels."""
    if not isinstance(cam, torch.Tensor) or cam.dim() != x.dim():
        shape = tuple(cam.shape) if isinstance(cam, torch.Tensor) else type(cam).__name__
        raise InvalidInputError(f"Grad-CAM needs a layer whose output has the inputs' spatial axes, "
                                f"(B, K, h, w) for inputs {tuple(x.shape)}; the layer's map is {shape}")
    up = _captum().LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode=mode)
    return up.expand_as(x).contiguous()  # (B, 1, H, W) -> (B, C, H, W)


@EXPLAINERS.register("grad-cam")
class GradCam(CaptumExplainer):
    """Grad-CAM: ``up(sum_k a_k A^k)`` with ``a_k = mean_ij d f_t / d A^k_ij`` (Captum ``LayerGradCam``).

    ``A`` is the output of ``layer`` (a module path such as ``"features.3"`` or a submodule;
    default: the last ``nn.Conv2d`` registered in the model); ``up`` interpolates the map to the
    input size (``interpolate_mode``: ``"bilinear"`` as in the paper, or ``"nearest"``, ...) and
    the result is broadcast over the input channels. Signed by default; ``relu=True`` applies the
    paper's final ReLU.

    Selvaraju et al. 2017, "Grad-CAM: visual explanations from deep networks via gradient-based
    localization", ICCV, arXiv:1610.02391.
    """

    name = "grad-cam"

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None,
                 interpolate_mode: str = "bilinear", relu: bool = False, **options) -> None:
        super().__init__(model, **options)
        self.layer = _layer(model, layer)
        self.interpolate_mode = interpolate_mode
        self.relu = bool(relu)

    def _attribute(self, forward, x, ids):
        mode = _check_mode(self.interpolate_mode, x)
        cam = _captum().LayerGradCam(forward, self.layer).attribute(
            x, additional_forward_args=(ids,), relu_attributions=self.relu)
        return _upsample(cam, x, mode)


@EXPLAINERS.register("guided-grad-cam")
class GuidedGradCam(CaptumExplainer):
    """Guided Grad-CAM: Guided Backprop times the upsampled, ReLU'd Grad-CAM map,
    ``gb(x) * up(relu(sum_k a_k A^k))`` (Captum ``GuidedGradCam``; ``layer`` and
    ``interpolate_mode`` as in :class:`GradCam`, bilinear by default as in the paper).

    The Guided Backprop factor only reaches ``nn.ReLU`` modules (see :class:`GuidedBackprop`).

    Selvaraju et al. 2017, "Grad-CAM: visual explanations from deep networks via gradient-based
    localization", ICCV, arXiv:1610.02391.
    """

    name = "guided-grad-cam"

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None,
                 interpolate_mode: str = "bilinear", **options) -> None:
        super().__init__(model, **options)
        self.layer = _layer(model, layer)
        self.interpolate_mode = interpolate_mode
        self.unreached = _relu_coverage(self)

    def _attribute(self, forward, x, ids):
        mode = _check_mode(self.interpolate_mode, x)
        attribution = _captum().GuidedGradCam(forward, self.layer).attribute(
            x, additional_forward_args=(ids,), interpolate_mode=mode)
        if attribution.shape != x.shape:
            raise InvalidInputError(f"guided-grad-cam: the map of layer {type(self.layer).__name__} cannot "
                                    f"be upsampled to the inputs {tuple(x.shape)}; pick a layer with a "
                                    "(B, K, h, w) output")
        return attribution
