"""The settings dataclasses of the training recipes, in a module that imports no torch.

``pellucid train RECIPE --help`` turns a recipe's settings into command-line options, so they live
here, apart from the code that trains (:mod:`pellucid.train.trainer`,
:mod:`pellucid.train.metric_recipes`, :mod:`pellucid.train.inh`), which re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from pellucid._config import CheckedConfig, config_option

__all__ = ["DictionaryMLPConfig", "InhMnistConfig", "LocalMLPConfig", "MetricMLPConfig",
           "MetricResNetConfig", "MetricResNetFashionConfig", "PlainMLPConfig", "TrainConfig",
           "classifier_config"]

_opt = config_option

# pellucid.nn.disjunctive.hashing's SIMILARITIES and THRESHOLD_MODES (that module imports torch;
# tests/test_startup.py checks that the two stay equal)
INH_SIMILARITIES = ("centred-cosine", "cosine", "l2")
INH_THRESHOLD_MODES = ("max", "batch")


# -- the shared trainer (pellucid.train.trainer.fit) ----------------------------------------------

@dataclass
class TrainConfig(CheckedConfig):
    """Optimisation and validation settings (defaults: the white-box paper's)."""

    epochs: int = _opt(15, "passes over the training split", min=1)
    batch_size: int = _opt(200, "images per optimizer step", min=1)
    lr: float = _opt(3e-3, "learning rate (L2 weight decay in the gradient, not AdamW)", above=0)
    weight_decay: float = _opt(3e-6, "L2 weight decay", min=0)
    optimizer: str = _opt("adam", "adam, or sgd (heavy-ball momentum, see --momentum)",
                          choices=("adam", "sgd"))
    momentum: float = _opt(0.9, "SGD momentum (--optimizer sgd only)", min=0, max=0.999)
    noise_p: float = _opt(0.7, "per batch, with this probability: x <- clip(x + N(noise_mean, "
                               "noise_std^2), 0, 1)", min=0, max=1)
    noise_mean: float = _opt(0.05, "mean of the noise augmentation")
    noise_std: float = _opt(0.25, "standard deviation of the noise augmentation", min=0)
    adv_eps: float = _opt(0.0, "> 0: Madry-style PGD adversarial training at this L-inf eps", min=0)
    adv_steps: int = _opt(7, "PGD steps of adversarial training (step 2.5 eps / steps)", min=1)
    adv_warmup_epochs: float = _opt(0.0, "epochs over which the adversarial-training eps ramps "
                                         "linearly from 0 to adv_eps, step by step", min=0)
    val_size: int = _opt(1000, "images held out of the train split for per-epoch validation", min=0)
    val_pgd_steps: int = _opt(10, "PGD steps of the per-epoch robust validation (0: none)", min=0)
    val_eps: float = _opt(0.3, "L-inf eps of the validation PGD", min=0)
    val_step: float = _opt(0.1, "step size of the validation PGD", above=0)
    seed: int = _opt(314, "seed of initialisation, data order, augmentation and the split", min=0,
                     max=2**63 - 1)
    schedule: str = _opt("constant", "learning rate: constant, or cosine (per step, "
                                     "lr (1 + cos(pi s / S)) / 2 at step s of S, to 0 at the end)",
                         choices=("constant", "cosine"))
    augment: str = _opt("noise", "batch augmentation: noise (see noise_p), crop-flip (random crop "
                                 "after zero padding by 4 pixels, and a horizontal flip with "
                                 "probability 1/2, per image) or none (no augmentation and no random "
                                 "draw for it)", choices=("noise", "crop-flip", "none"))
    checkpoint_minutes: float = _opt(10.0, "within an epoch, also save the resumable state every this "
                                           "many minutes (0: at epoch ends only), so a kill loses at "
                                           "most that much work; may change on resume", min=0)

    # Settings that choose how the same math is computed, not what is computed: a resumed run may
    # change them (a subclass adds its own, e.g. a compiled kernel).
    EXECUTION_OPTIONS: ClassVar[tuple[str, ...]] = ("checkpoint_minutes",)


def classifier_config(recipe: str, **defaults: Any) -> type:
    """:class:`TrainConfig`, or with ``defaults`` a subclass named ``{recipe}Config`` whose fields
    take those defaults (each option's help kept), so ``--help`` shows the recipe's own values."""
    if not defaults:
        return TrainConfig
    meta = {f.name: f.metadata for f in fields(TrainConfig)}
    return dataclass(type(f"{recipe}Config", (TrainConfig,),
                          {"__annotations__": {k: type(v) for k, v in defaults.items()},
                           **{k: field(default=v, metadata=meta[k]) for k, v in defaults.items()}}))


# -- the metric-neuron recipes (pellucid.train.metric_recipes) ------------------------------------

_HELP = {f.name: f.metadata["help"] for f in fields(TrainConfig)}


def _same(name: str, default: Any, help: str | None = None, **limits: Any):
    """A TrainConfig option with this recipe's default (its help kept unless given)."""
    return _opt(default, help or _HELP[name], **limits)


@dataclass
class _ProtocolDefaults(TrainConfig):
    """What every metric recipe changes in the shared trainer: no augmentation, no validation split
    (test accuracy after every epoch instead), no weight decay, seed 0."""

    weight_decay: float = _same("weight_decay", 0.0, min=0)
    noise_p: float = _same("noise_p", 0.0, min=0, max=1)
    val_size: int = _same("val_size", 0, min=0)
    val_pgd_steps: int = _same("val_pgd_steps", 0, min=0)
    seed: int = _same("seed", 0, "seed of initialisation, data order and sampling", min=0, max=2**63 - 1)
    augment: str = _same("augment", "none", choices=("noise", "none"))
    dataset: str = _opt("fashion-mnist", "dataset name (see pellucid.data)")
    test_limit: int = _opt(0, "> 0: measure the per-epoch test accuracy on the first N test images", min=0)
    train_limit: int = _opt(0, "> 0: train on N training images drawn at random (seeded by --seed) "
                               "instead of the whole train split", min=0)


@dataclass
class MetricMLPConfig(_ProtocolDefaults):
    """Table 1 protocol of Metric as Transform (Fashion-MNIST)."""

    epochs: int = _same("epochs", 50, min=1)
    batch_size: int = _same("batch_size", 50, min=1)
    lr: float = _same("lr", 1e-4, "Adam learning rate (cosine-annealed to 0 over all steps)", above=0)
    schedule: str = _same("schedule", "cosine", choices=("constant", "cosine"))
    metric: str = _opt("l2", "l<p> (l0.5, l1, l2, l20, ...), stereo, cosine, linear, convex, "
                             "convex-icnn, invex, ordinary or ordinary-mlp")
    hidden: int = _opt(100, "H, metric neurons", min=1)
    variant: str = _opt("standardised", "lp only: standardised (paper) or simple",
                        choices=("standardised", "simple"))
    compiled_kernels: bool = _opt(False, "lp with p != 2, convex and ordinary-mlp: torch.compile'd "
                                         "distance loops (needs a C++ compiler; ~5x faster at p = 0.5, "
                                         "H = 500); may change on resume")
    factored_output: bool = _opt(False, "invex and ordinary: the residual block's last layer and the "
                                        "norm as one quadratic form (the same function, about 1.5x "
                                        "faster at H >= 100, equal up to rounding); may change on resume")

    EXECUTION_OPTIONS: ClassVar[tuple[str, ...]] = TrainConfig.EXECUTION_OPTIONS + (
        "compiled_kernels", "factored_output")


@dataclass
class DictionaryMLPConfig(_ProtocolDefaults):
    """Epsilon-softmax dictionary MLP of the rejection experiments (Fashion-MNIST)."""

    epochs: int = _same("epochs", 30, min=1)
    batch_size: int = _same("batch_size", 50, min=1)
    lr: float = _same("lr", 0.01, above=0)
    hidden: int = _opt(100, "H, keys", min=1)
    centre_lr_scale: float = _opt(1.0, "keys learn at lr * this (paper: 1 or 0.01)", min=0)
    data_init: bool = _opt(False, "keys = random training images, values = one-hot labels")
    epsilon_mode: str = _opt("running", "running, learned or fixed", choices=("running", "learned", "fixed"))


@dataclass
class _LocalProtocol(_ProtocolDefaults):
    """The protocol shared by the local MLPs and their plain baseline."""

    epochs: int = _same("epochs", 10, min=1)
    batch_size: int = _same("batch_size", 50, min=1)
    lr: float = _same("lr", 1e-3, above=0)
    schedule: str = _same("schedule", "cosine", choices=("constant", "cosine"))


@dataclass
class LocalMLPConfig(_LocalProtocol):
    """Input projection -> ``depth`` local blocks (residual or epsilon-highway) -> linear head."""

    width: int = _opt(64, "features of the input projection and of every block", min=1)
    hidden: int = _opt(100, "H, centres per block", min=1)
    depth: int = _opt(2, "local blocks", min=1)
    distance: str = _opt("l2", "l<p>: the blocks' distance to their centres")
    epsilon_mode: str = _opt("running", "running, learned or fixed", choices=("running", "learned", "fixed"))
    epsilon: float = _opt(1.0, "the starting epsilon of the learned and fixed modes (running: the first "
                               "batch's mean distance)", above=0)
    centre_lr_scale: float = _opt(1.0, "centres learn at lr * this", min=0)


@dataclass
class MetricResNetConfig(_ProtocolDefaults):
    """ResNet-20 protocol of Metric as Transform (CIFAR-10): SGD 0.1 with momentum 0.9, weight
    decay 5e-4, cosine over 200 epochs, batch 128, random crop and flip."""

    epochs: int = _same("epochs", 200, min=1)
    batch_size: int = _same("batch_size", 128, min=1)
    lr: float = _same("lr", 0.1, above=0)
    weight_decay: float = _same("weight_decay", 5e-4, min=0)
    optimizer: str = _same("optimizer", "sgd", choices=("adam", "sgd"))
    schedule: str = _same("schedule", "cosine", choices=("constant", "cosine"))
    augment: str = _same("augment", "crop-flip", choices=("noise", "crop-flip", "none"))
    dataset: str = _opt("cifar10", "dataset name (see pellucid.data); its images must be 3 x 32 x 32")
    metric: str = _opt("l2", "every convolution's form: l2 (conv path), stereo (conv path), linear "
                             "(nn.Conv2d), or any other vector metric name (unfold form, slower)")


@dataclass
class MetricResNetFashionConfig(MetricResNetConfig):
    """The same protocol on grey 28x28 images: Fashion-MNIST stands in for CIFAR-10."""

    dataset: str = _opt("fashion-mnist", "dataset name (see pellucid.data); its images must be 1 x 28 x 28")


@dataclass
class PlainMLPConfig(_LocalProtocol):
    """The baseline of the local MLPs: the same protocol, ReLU layers instead of local blocks."""

    width: int = _opt(87, "features of every hidden layer (87: as many parameters as the local MLPs' "
                          "defaults)", min=1)
    depth: int = _opt(2, "hidden Linear + ReLU layers", min=1)


# -- inh-mnist (pellucid.train.inh) ---------------------------------------------------------------

@dataclass
class InhMnistConfig(CheckedConfig):
    """Greedy slot fit of a 1-layer INH on the full 10-class MNIST training split, then a gradient
    stage on the slots (``tune_epochs=0``: the greedy fit alone)."""

    similarity: str = _opt("centred-cosine", "match m_s(x): centred-cosine (cosine of mean-centred "
                                             "images), cosine, or l2 (minus the Euclidean distance)",
                           choices=INH_SIMILARITIES)
    batch_size: int = _opt(128, "images per batch of the greedy fit; thresholds and candidates are "
                                "per batch", min=1)
    max_passes: int = _opt(10, "passes over the training split at most (the fit stops earlier "
                               "once a pass adds no slot and raises no threshold)", min=1)
    threshold_mode: str = _opt("batch", "max: running maximum of the batch thresholds (precision 1 "
                                        "on every batch seen); batch: each batch's own, stored as "
                                        "their mean", choices=INH_THRESHOLD_MODES)
    prune: bool = _opt(True, "keep only a greedy set cover of the training set by the fitted slots")
    eps: float = _opt(1e-4, "margin of a threshold above the closest input of another class", above=0)
    tune_epochs: int = _opt(8, "epochs of the gradient stage on keys and thresholds (0: none)", min=0)
    tune_lr: float = _opt(3e-3, "peak learning rate of the gradient stage (Adam, one-cycle)", above=0)
    tune_temperature: float = _opt(0.02, "temperature tau of the soft OR over a class's slots in "
                                         "the gradient stage", above=0)
    tune_batch_size: int = _opt(256, "images per step of the gradient stage", min=1)
    seed: int = _opt(0, "seed of the batch orders", min=0, max=2**63 - 1)
