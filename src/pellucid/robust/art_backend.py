"""ART (adversarial-robustness-toolbox) attacks behind pellucid's attack signature.

Every attack here has the native signature ``attack(model, x, y, *, eps, norm, ...) -> x_adv``
on tensors in the model's natural range and an options dataclass (see
:mod:`pellucid.robust.attacks`), so the registry, the evaluator and the CLI treat them like the
native PGD. What ART needs is handled once, in :func:`art_classifier`:

- binary models get a constant third logit (-100): the DLR loss divides by
  :math:`z_{\\pi_1} - z_{\\pi_3}` and needs at least three classes (the white-box paper's
  protocol); the extra logit changes neither the argmax nor, to float precision, the CE loss;
- the model is put in eval mode and its parameters stop requiring gradients for the duration
  (ART calls ``loss.backward()``, which would otherwise also compute every weight gradient);
- inputs go to the model's device and dtype and come back on the caller's, whatever device ART
  picks (the CPU, or the current CUDA device, made the model's); ART's NumPy RNG is seeded from
  ``generator`` and restored afterwards, so runs are reproducible without global side effects.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Iterator

import numpy as np
import torch
from torch import nn

from pellucid._device import draw_device
from pellucid._rng import seeded_global_rng
from pellucid.errors import InvalidInputError, PellucidError
from pellucid.robust.attacks import attack_mode, register_attack
from pellucid.robust.options import APGDOptions, BoundaryOptions, DeepFoolOptions, SquareOptions

PAD_LOGIT = -100.0  # the constant third logit of binary models (reference protocol)
_NORMS = {"linf": np.inf, "l2": 2}


class PadBinaryLogits(nn.Module):
    """``z -> [z_0, z_1, c]``: a constant extra logit so that 2-class models have 3 logits."""

    def __init__(self, model: nn.Module, value: float = PAD_LOGIT) -> None:
        super().__init__()
        self.model, self.value = model, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x)  # (B, 2)
        return torch.cat([z, z.new_full((z.shape[0], 1), self.value)], dim=1)  # (B, 3)


class _CastInput(nn.Module):
    """Inputs to the model's device and dtype, outputs back to the input's device.

    ART hands some models float64 arrays (Boundary). It keeps its tensors on the CPU or on the
    current CUDA device, so a model elsewhere (MPS, another GPU) computes there while ART's
    loss and labels stay where ART put them; both moves are differentiable.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        # not a submodule: ART moves its model to its own device, which would move the caller's
        self.__dict__["target"] = model
        self.dtype, self.device = dtype, device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.target(x.to(self.device, self.dtype)).to(x.device)


def _import_art():
    try:
        import art  # noqa: F401  (only checks that it is installed)
    except ImportError as e:  # pragma: no cover - ART is a core dependency
        raise PellucidError("this attack needs ART: pip install adversarial-robustness-toolbox") from e


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and ``requires_grad=False`` on every parameter; both restored on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    with attack_mode(model):
        try:
            for p, _ in flags:
                p.requires_grad_(False)
            yield model
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)


def numpy_seed(generator: torch.Generator | None) -> ContextManager[None]:
    """NumPy's global RNG (which ART draws from) and torch's CPU default generator seeded from
    ``generator`` inside, restored on exit (one seeded block at a time: :mod:`pellucid._rng`);
    ``None`` leaves them as they are."""
    seed = (int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=draw_device(generator)))
            if generator else None)
    return seeded_global_rng(seed, numpy=True)


@contextlib.contextmanager
def art_classifier(model: nn.Module, x: torch.Tensor, value_range: tuple[float, float]):
    """An ART ``PyTorchClassifier`` for ``model`` (see the module docstring for what it handles)."""
    _import_art()
    from art.estimators.classification import PyTorchClassifier

    param = next(model.parameters(), None)
    device = param.device if param is not None else x.device
    dtype = param.dtype if param is not None else x.dtype
    with frozen(model), torch.no_grad():
        n_classes = model(x[:1].to(device, dtype)).shape[1]
    if n_classes < 2:
        raise InvalidInputError(f"a classifier needs >= 2 logits, the model returns {n_classes}")
    net = _CastInput(PadBinaryLogits(model) if n_classes == 2 else model, dtype, device)
    # ART's "gpu" is the current CUDA device: make it the model's for the duration, and the
    # default device too (ART builds some tensors without naming a device)
    on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with frozen(model), on_device, torch.device(device):
        yield PyTorchClassifier(
            model=net, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
            nb_classes=max(n_classes, 3), clip_values=tuple(float(v) for v in value_range),
            device_type="gpu" if device.type == "cuda" else "cpu")


def _norm(norm: str) -> float:
    if norm not in _NORMS:
        raise InvalidInputError(f"norm must be one of {sorted(_NORMS)}, got {norm!r}")
    return _NORMS[norm]


def run_art(build: Callable, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
            value_range: tuple[float, float] = (0.0, 1.0),
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Run ``build(classifier).generate`` on ``x`` with the true labels ``y``; returns ``x_adv``."""
    if len(x) == 0:
        return x.clone()
    with art_classifier(model, x, value_range) as clf, numpy_seed(generator):
        x_np = x.detach().cpu().numpy().astype(np.float32)
        x_adv = build(clf).generate(x=x_np, y=y.detach().cpu().numpy())
    return torch.from_numpy(np.asarray(x_adv, dtype=np.float32)).to(x.device, x.dtype)


# --- registered attacks (ART implementations) -------------------------------------------------

def _apgd(loss_type: str):
    def attack(model, x, y, *, eps: float, norm: str = "linf",
               step_size: float | None = APGDOptions.step_size, steps: int = APGDOptions.steps,
               restarts: int = APGDOptions.restarts, value_range=(0.0, 1.0), generator=None,
               batch_size: int = 1024, progress: bool = False) -> torch.Tensor:
        from art.attacks.evasion import AutoProjectedGradientDescent

        return run_art(lambda clf: AutoProjectedGradientDescent(
            clf, norm=_norm(norm), eps=eps, eps_step=eps / 3 if step_size is None else step_size,
            max_iter=steps, targeted=False, nb_random_init=restarts, batch_size=batch_size,
            loss_type=loss_type, verbose=progress), model, x, y, value_range=value_range,
            generator=generator)

    return attack


register_attack("apgd-ce", APGDOptions, "AutoPGD on cross-entropy (ART), 100 steps")(_apgd("cross_entropy"))
register_attack("apgd-dlr", APGDOptions, "AutoPGD on the DLR loss (ART), 100 steps")(
    _apgd("difference_logits_ratio"))


@register_attack("square", SquareOptions, "Square attack (ART): black-box random search, 5000 queries")
def square(model, x, y, *, eps: float, norm: str = "linf", queries: int = SquareOptions.queries,
           restarts: int = SquareOptions.restarts, p_init: float = SquareOptions.p_init,
           value_range=(0.0, 1.0), generator=None, batch_size: int = 2048,
           progress: bool = False) -> torch.Tensor:
    """Score-based random search in the eps-ball (Andriushchenko et al. 2020); no gradients."""
    from art.attacks.evasion import SquareAttack

    h, w = x.shape[-2:]
    if norm == "linf" and round((p_init * h * w) ** 0.5) >= min(h, w):
        # ART draws the square's corner with randint(0, H - side), which fails at side >= H
        raise InvalidInputError(f"square: p_init {p_init} gives squares as large as the {h}x{w} "
                                "image; use a smaller p_init")
    return run_art(lambda clf: SquareAttack(
        clf, norm=_norm(norm), max_iter=queries, eps=eps, p_init=p_init, nb_restarts=restarts,
        batch_size=batch_size, verbose=progress), model, x, y, value_range=value_range,
        generator=generator)


@register_attack("deepfool", DeepFoolOptions, "DeepFool (ART): minimal L2 perturbation, unbounded")
def deepfool(model, x, y, *, eps: float = 0.0, steps: int = DeepFoolOptions.steps,
             overshoot: float = DeepFoolOptions.overshoot, value_range=(0.0, 1.0), generator=None,
             batch_size: int = 1024, progress: bool = False) -> torch.Tensor:
    """Unbounded: ``eps`` and ``norm`` are not used here; the evaluator keeps only results inside
    the budget."""
    from art.attacks.evasion import DeepFool

    return run_art(lambda clf: DeepFool(clf, max_iter=steps, epsilon=overshoot, nb_grads=10,
                                        batch_size=batch_size, verbose=progress),
                   model, x, y, value_range=value_range, generator=generator)


def _seeded_boundary_attack():
    """ART's ``BoundaryAttack`` with its starting points drawn from NumPy's global RNG, which
    :func:`numpy_seed` seeds: ART draws them from a fresh, unseeded ``RandomState`` per image."""
    from art.attacks.evasion import BoundaryAttack

    class SeededBoundaryAttack(BoundaryAttack):
        """Untargeted only. The search is ART's: up to ``init_size`` uniform images in the clip
        range per image, the first one the model labels other than the clean image wins; all
        images at once, one batched prediction per round."""

        def generate(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs) -> np.ndarray:
            if self.targeted:  # pragma: no cover - pellucid runs it untargeted
                raise InvalidInputError("the seeded Boundary attack is untargeted")
            if kwargs.get("x_adv_init") is None:
                kwargs["x_adv_init"] = self.random_starts(x)
            return super().generate(x, y, **kwargs)

        def random_starts(self, x: np.ndarray) -> np.ndarray:
            """Per image, the first of ``init_size`` uniform draws the model labels differently
            from ``x``; ``x`` itself where none is (the attack then leaves that image as it is)."""
            low, high = self.estimator.clip_values
            clean = self.estimator.predict(x, batch_size=self.batch_size).argmax(1)
            starts, found = x.copy(), np.zeros(len(x), dtype=bool)
            for _ in range(self.init_size):  # rounds, each over every image still without a start
                todo = np.flatnonzero(~found)
                if not len(todo):
                    break
                draws = np.random.uniform(low, high, size=(len(todo), *x.shape[1:])).astype(x.dtype)
                hit = self.estimator.predict(draws, batch_size=self.batch_size).argmax(1) != clean[todo]
                starts[todo[hit]], found[todo[hit]] = draws[hit], True
            return starts

        def _init_sample(self, x, y, y_p, init_pred, adv_init, clip_min, clip_max):
            # ART's own search would draw from an unseeded RandomState; ours ran in generate()
            if adv_init is None or init_pred == y_p:
                return None  # no start within init_size draws: ART's search gives up there too
            return adv_init.astype(np.float32), init_pred

    return SeededBoundaryAttack


@register_attack("boundary", BoundaryOptions,
                 "Boundary attack (ART): decision-based minimal perturbation, unbounded")
def boundary(model, x, y, *, eps: float = 0.0, steps: int = BoundaryOptions.steps,
             value_range=(0.0, 1.0), generator=None, progress: bool = False) -> torch.Tensor:
    """Brendel et al. 2018, untargeted, ``steps`` iterations (the paper's 1000); one image at a
    time in ART, so slow: use it on a few images for the minimal-perturbation figure. Unbounded,
    like DeepFool (``eps`` and ``norm`` are not used). Reproducible from ``generator``: the
    starting points (ART's search, batched) and ART's steps draw from NumPy's RNG seeded by it."""
    attack = _seeded_boundary_attack()
    return run_art(lambda clf: attack(clf, targeted=False, max_iter=steps, batch_size=64, verbose=progress),
                   model, x, y, value_range=value_range, generator=generator)
