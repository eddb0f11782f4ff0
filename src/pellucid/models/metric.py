"""Models built from metric neurons ("Metric as Transform").

* :class:`MetricMLP`          metric layer -> BatchNorm1d(H, affine=False) -> LayerNorm(H) -> ELU ->
                              Linear(H, K): the Fashion-MNIST benchmark (Table 1).
* :class:`DictionaryMLP`      ``Y = eps-softmax(-s [d, epsilon]) [V; 0]``: keys = centres, values ``V``,
                              the epsilon neuron's value row held at 0; rejects unknown inputs.
* :class:`LocalResidual`      ``y = x + [V; 0]^T a``;  :class:`EpsilonHighway` ``y = V^T a_{1..H} + b + a_eps x``;
                              :class:`LocalMLP` stacks them between an input projection and a linear head.
* :class:`PlainMLP`           ReLU MLP, the local MLPs' baseline.
* :class:`MetricResNet20`     CIFAR-10 ResNet-20 with every convolution a metric convolution.

Image models take images in [0, 1] and map them to [-1, 1] (the paper's input scaling) inside.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from pellucid.errors import InvalidInputError
from pellucid.models.registry import register_model
from pellucid.nn.metric.distance import (ConvexDistance, CosineSimilarity, InputConvexDistance, LpDistance, StereoAngle,
                                         check_features, lp_distance)
from pellucid.nn.metric.invex import InvexDistance
from pellucid.nn.metric.conv import L2DistanceConv2d, MetricConv2d
from pellucid.nn.metric.similarity import EpsilonSoftmax

__all__ = ["DictionaryMLP", "EpsilonHighway", "LocalMLP", "LocalResidual", "METRICS", "MetricMLP",
           "MetricResNet20", "PlainMLP", "check_hidden", "lp_order", "metric_conv", "metric_layer"]

# torch.fx records the input checks as one call each (they read shapes and values, which a trace
# cannot), so traced copies (e.g. for excitation pullbacks) still check every input.
torch.fx.wrap("check_features")

METRICS = ("l0.5", "l1", "l2", "l20", "stereo", "cosine", "linear", "convex", "convex-icnn", "invex", "ordinary",
           "ordinary-mlp")


def lp_order(name: str) -> float:
    """``"l<p>"`` -> ``p`` (any ``p > 0``: ``l0.5``, ``l1``, ``l2``, ``l20``); else
    :class:`InvalidInputError`."""
    try:
        p = float(name[1:]) if isinstance(name, str) and name.startswith("l") else float("nan")
    except ValueError:
        p = float("nan")
    if not p > 0:
        raise InvalidInputError(f"unknown metric {name!r}: write l<p> with p > 0, e.g. l2; "
                                f"known: {', '.join(METRICS)}")
    return p


def check_hidden(hidden: int, name: str = "hidden") -> None:
    """Raise :class:`InvalidInputError` unless ``hidden`` (a number of neurons) is an int >= 1."""
    if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1:
        raise InvalidInputError(f"{name} must be an int >= 1 (the number of centres), got {hidden!r}")


def metric_layer(metric: str, in_features: int, out_features: int, variant: str = "standardised",
                 inner_hidden: int = 500) -> nn.Module:
    """A ``(B, D) -> (B, H)`` layer by name: ``l<p>`` (any p > 0, e.g. ``l0.5``, ``l2``, ``l20``),
    ``stereo``, ``cosine``, ``linear`` (``nn.Linear``), ``convex`` (:class:`ConvexDistance`),
    ``convex-icnn`` (:class:`InputConvexDistance` with the author's notebook's widths
    ``inner_hidden + 2, inner_hidden + 1``), ``invex``, ``ordinary`` (the invex network without its
    spectral-norm cap) and ``ordinary-mlp`` (the convex network without its constraints)."""
    check_hidden(out_features, "out_features")
    if isinstance(metric, str) and metric.startswith("l") and metric != "linear":
        return LpDistance(in_features, out_features, p=lp_order(metric), variant=variant)
    builders = {
        "stereo": lambda: StereoAngle(in_features, out_features),
        "cosine": lambda: CosineSimilarity(in_features, out_features),
        "linear": lambda: nn.Linear(in_features, out_features),
        "convex": lambda: ConvexDistance(in_features, out_features, inner_hidden),
        "convex-icnn": lambda: InputConvexDistance(in_features, out_features, (inner_hidden + 2, inner_hidden + 1)),
        "invex": lambda: InvexDistance(in_features, out_features, inner_hidden, contractive=True),
        "ordinary": lambda: InvexDistance(in_features, out_features, inner_hidden, contractive=False),
        # another reading of the paper's "ordinary" row: the convex network without its constraints
        "ordinary-mlp": lambda: ConvexDistance(in_features, out_features, inner_hidden, convex=False),
    }
    if metric not in builders:
        raise InvalidInputError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    return builders[metric]()


def _flat_signed(x: torch.Tensor, in_features: int) -> torch.Tensor:
    """Images in [0, 1] ``(B, C, H, W)`` (or already flat) -> ``(B, D)`` in [-1, 1]."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise InvalidInputError(f"expected a batch of images, got {getattr(x, 'shape', type(x).__name__)}")
    flat = x.flatten(1) * 2 - 1
    if flat.shape[1] != in_features:
        raise InvalidInputError(f"expected {in_features} values per image, got {flat.shape[1]} "
                                f"(input shape {tuple(x.shape)})")
    return flat


torch.fx.wrap("_flat_signed")


def _check_images(x: torch.Tensor, channels: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != channels:
        raise InvalidInputError(f"expected images (B, {channels}, H, W), got {getattr(x, 'shape', None)}")


torch.fx.wrap("_check_images")


class MetricMLP(nn.Module):
    """``metric(x) -> BatchNorm1d(H, affine=False) -> LayerNorm(H) -> ELU -> Linear(H, K)``."""

    def __init__(self, metric: str = "l2", hidden: int = 100, in_features: int = 784,
                 classes: int = 10, variant: str = "standardised", inner_hidden: int = 500) -> None:
        super().__init__()
        self.in_features = in_features
        self.metric = metric_layer(metric, in_features, hidden, variant, inner_hidden)
        self.norm = nn.Sequential(nn.BatchNorm1d(hidden, affine=False), nn.LayerNorm(hidden), nn.ELU())
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.metric(_flat_signed(x, self.in_features))))


class DictionaryMLP(nn.Module):
    r"""Key-value dictionary of metric neurons with an epsilon neuron.

    ``d_j = ||x - k_j||_2``, ``a = softmax(-s [d_1..d_H, \epsilon])`` (``(B, H+1)``),
    ``logits = a [V; 0]`` with ``V`` ``(H, K)``: the epsilon row is a fixed zero, so a rejected
    input pushes every class score to 0. :meth:`rejects` is ``True`` where the epsilon neuron has the
    largest activation (``min_j d_j > \epsilon``).
    """

    def __init__(self, hidden: int = 100, in_features: int = 784, classes: int = 10,
                 epsilon_mode: str = "running", epsilon: float | None = None) -> None:
        super().__init__()
        check_hidden(hidden)
        self.in_features, self.hidden, self.classes = in_features, hidden, classes
        self.keys = nn.Parameter(torch.randn(hidden, in_features) / 3)  # (H, D)
        self.values = nn.Parameter(torch.randn(hidden, classes) / hidden ** 0.5)  # (H, K)
        self.similarity = EpsilonSoftmax(epsilon, mode=epsilon_mode)

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        flat = _flat_signed(x, self.in_features)
        check_features(flat, self.in_features)
        return lp_distance(flat, self.keys, 2.0)  # (B, H)

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """``a`` ``(B, H + 1)``; column ``H`` is the epsilon neuron."""
        return self.similarity(self.distances(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.activations(x)
        return a[:, :-1] @ self.values  # == a @ [V; 0]: the epsilon row of the values is 0

    @torch.no_grad()
    def rejects(self, x: torch.Tensor) -> torch.Tensor:
        """``(B,)`` bool: the epsilon neuron has the largest activation (``min_j d_j > epsilon``)."""
        return self.similarity.rejects(self.distances(x))

    @property
    def epsilon(self) -> float:
        return float(self.similarity.epsilon)

    def set_epsilon(self, epsilon: float) -> None:
        self.similarity.set_epsilon(epsilon)

    @torch.no_grad()
    def init_from_data_(self, images: torch.Tensor, labels: torch.Tensor, value: float = 1.0) -> None:
        """Keys = the given samples (``H`` of them), values = ``value`` x one-hot labels, and epsilon
        (unless fixed) = the mean pairwise distance of the keys."""
        if images.shape[0] != self.hidden or labels.shape != (self.hidden,):
            raise InvalidInputError(f"need exactly hidden={self.hidden} samples and labels, got "
                                    f"{images.shape[0]} and {tuple(labels.shape)}")
        self.keys.copy_(_flat_signed(images, self.in_features))
        self.values.copy_(F.one_hot(labels.long(), self.classes).to(self.values) * value)
        if self.similarity.mode != "fixed":
            pair = lp_distance(self.keys, self.keys, 2.0)
            n = self.hidden
            self.similarity.set_epsilon(float(pair.sum() / max(n * (n - 1), 1)))


class _LocalBlock(nn.Module):
    r"""Shared by the two local blocks: ``H`` centres in ``R^D``, ``d_j = ||x - c_j||_p`` and the
    epsilon-softmax ``a = softmax(-s [d_1..d_H, \epsilon])`` (``(B, H + 1)``, column ``H`` = epsilon).

    ``values`` ``V`` is ``(H, D)``: the epsilon neuron's value row is not a parameter but a constant
    zero, so no optimizer can move it (:meth:`value_matrix` is ``[V; 0]``, ``(H + 1, D)``).
    """

    def __init__(self, features: int, hidden: int, distance: str = "l2", epsilon_mode: str = "running",
                 epsilon: float | None = None) -> None:
        super().__init__()
        check_hidden(features, "features")
        check_hidden(hidden)
        self.features, self.hidden, self.distance = features, hidden, distance
        self.p = lp_order(distance)
        self.centres = nn.Parameter(torch.randn(hidden, features) / 3)  # (H, D)
        self.values = nn.Parameter(torch.zeros(hidden, features))  # V, (H, D)
        self.similarity = EpsilonSoftmax(epsilon, mode=epsilon_mode)

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """``a`` ``(B, H + 1)``; column ``H`` is the epsilon neuron."""
        check_features(x, self.features)
        return self.similarity(lp_distance(x, self.centres, self.p))

    def value_matrix(self) -> torch.Tensor:
        """``[V; 0]`` ``(H + 1, D)``: the values with the epsilon neuron's (zero) row."""
        return torch.cat([self.values, self.values.new_zeros(1, self.features)])

    def extra_repr(self) -> str:
        return f"{self.features}, hidden={self.hidden}, distance={self.distance}"


class LocalResidual(_LocalBlock):
    r"""Local residual block: ``y = x + [V; 0]^T a``, ``a = eps-softmax(-s [||x - c_j||_p, \epsilon])``.

    Each centre adds its value ``v_j`` to the inputs near it; the epsilon neuron adds nothing, so an
    input far from every centre (``a_\epsilon -> 1``) passes through unchanged: ``y -> x``.
    ``V`` starts at 0 (the block starts as the identity).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.activations(x)  # (B, H+1)
        return x + a[:, :-1] @ self.values  # == x + a [V; 0]


class EpsilonHighway(_LocalBlock):
    r"""Epsilon-highway block: ``y = V^T a_{1..H} + b + a_\epsilon x``.

    The epsilon activation gates the identity path: near a centre the block outputs that centre's
    value, far from every centre (``a_\epsilon -> 1``) it outputs ``x + b``. ``V`` and ``b`` start
    at 0.
    """

    def __init__(self, features: int, hidden: int, distance: str = "l2", epsilon_mode: str = "running",
                 epsilon: float | None = None) -> None:
        super().__init__(features, hidden, distance, epsilon_mode, epsilon)
        self.bias = nn.Parameter(torch.zeros(features))  # b, (D,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.activations(x)  # (B, H+1)
        return a[:, :-1] @ self.values + self.bias + a[:, -1:] * x


class LocalMLP(nn.Module):
    """The paper's local MLPs: ``Linear(D, width) -> block_1 -> ... -> block_depth -> Linear(width, K)``.

    The input projection embeds images (in [-1, 1]) in ``R^width``; every block (a
    :class:`LocalResidual` or an :class:`EpsilonHighway` of ``hidden`` centres) is the only
    non-linearity, so an input that no block recognises is mapped by the affine path alone.
    """

    def __init__(self, block: type[_LocalBlock], in_features: int = 784, width: int = 64,
                 hidden: int = 100, depth: int = 2, classes: int = 10, distance: str = "l2",
                 epsilon_mode: str = "running", epsilon: float | None = None) -> None:
        super().__init__()
        check_hidden(depth, "depth")
        self.in_features = in_features
        self.embed = nn.Linear(in_features, width)
        self.blocks = nn.Sequential(*(block(width, hidden, distance, epsilon_mode, epsilon)
                                      for _ in range(depth)))
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.embed(_flat_signed(x, self.in_features))))


class PlainMLP(nn.Module):
    """``Linear(D, width) -> ReLU -> [Linear(width, width) -> ReLU] x (depth - 1) -> Linear(width, K)``."""

    def __init__(self, in_features: int = 784, width: int = 87, depth: int = 2, classes: int = 10) -> None:
        super().__init__()
        check_hidden(width, "width")
        check_hidden(depth, "depth")
        self.in_features = in_features
        sizes = [in_features] + [width] * depth
        self.layers = nn.Sequential(*(m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), nn.ReLU())))
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(_flat_signed(x, self.in_features)))


# -- metric ResNet-20 (CIFAR-10) -------------------------------------------------------------------

def metric_conv(metric: str, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                padding: int = 0) -> nn.Module:
    """``l2``: :class:`L2DistanceConv2d` (convolution path); ``linear``: ``nn.Conv2d``; any other
    vector metric name (e.g. ``stereo``, ``l1``): its unfold conv form."""
    if metric == "l2":
        return L2DistanceConv2d(in_channels, out_channels, kernel_size, stride, padding)
    if metric == "linear":
        return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
    layer = metric_layer(metric, in_channels * kernel_size ** 2, out_channels)
    return MetricConv2d(layer, in_channels, kernel_size, stride, padding)


class _Block(nn.Module):
    def __init__(self, metric: str, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = metric_conv(metric, cin, cout, 3, stride, 1), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = metric_conv(metric, cout, cout, 3, 1, 1), nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            metric_conv(metric, cin, cout, 1, stride, 0), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class MetricResNet20(nn.Module):
    """ResNet-20 (3 stages x 3 blocks, widths 16/32/64) with metric convolutions (conv -> BN -> ReLU).

    The input is standardised per channel, ``(x - mean) / std``, with the training set's
    statistics: CIFAR-10's by default; ``in_channels=1`` with Fashion-MNIST's for the grey stand-in.
    """

    MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    # Fashion-MNIST's training-set pixel mean and std (60,000 images in [0, 1])
    GREY_MEAN, GREY_STD = (0.2860,), (0.3530,)

    def __init__(self, metric: str = "l2", classes: int = 10, widths=(16, 32, 64), blocks: int = 3,
                 in_channels: int = 3) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise InvalidInputError(f"in_channels must be 1 (grey) or 3 (colour), got {in_channels!r}")
        mean, std = (self.MEAN, self.STD) if in_channels == 3 else (self.GREY_MEAN, self.GREY_STD)
        self.in_channels = in_channels
        self.register_buffer("mean", torch.tensor(mean).view(1, in_channels, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, in_channels, 1, 1))
        self.stem = nn.Sequential(metric_conv(metric, in_channels, widths[0], 3, 1, 1),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for stage, width in enumerate(widths):
            for b in range(blocks):
                layers.append(_Block(metric, cin, width, 2 if stage > 0 and b == 0 else 1))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_images(x, self.in_channels)
        h = self.layers(self.stem((x - self.mean) / self.std))
        return self.head(h.mean((2, 3)))


# -- registry -------------------------------------------------------------------------------------

@register_model("metric-mlp", input_shape=(1, 28, 28), dataset="fashion-mnist",
                summary="metric-neuron MLP (Metric as Transform, Table 1) on Fashion-MNIST")
def metric_mlp(metric: str = "l2", hidden: int = 100, variant: str = "standardised",
               inner_hidden: int = 500) -> MetricMLP:
    return MetricMLP(metric, hidden, 784, 10, variant, inner_hidden)


@register_model("dictionary-mlp", input_shape=(1, 28, 28), dataset="fashion-mnist",
                summary="epsilon-softmax key/value dictionary MLP with rejection, Fashion-MNIST")
def dictionary_mlp(hidden: int = 100, epsilon_mode: str = "running",
                   epsilon: float | None = None) -> DictionaryMLP:
    return DictionaryMLP(hidden, 784, 10, epsilon_mode, epsilon)


@register_model("local-residual-mlp", input_shape=(1, 28, 28), dataset="fashion-mnist",
                summary="MLP of epsilon-softmax local residual blocks (y = x + V a), Fashion-MNIST")
def local_residual_mlp(width: int = 64, hidden: int = 100, depth: int = 2, distance: str = "l2",
                       epsilon_mode: str = "running", epsilon: float | None = None) -> LocalMLP:
    return LocalMLP(LocalResidual, 784, width, hidden, depth, 10, distance, epsilon_mode, epsilon)


@register_model("epsilon-highway-mlp", input_shape=(1, 28, 28), dataset="fashion-mnist",
                summary="MLP of epsilon-highway blocks (y = V a + b + a_eps x), Fashion-MNIST")
def epsilon_highway_mlp(width: int = 64, hidden: int = 100, depth: int = 2, distance: str = "l2",
                        epsilon_mode: str = "running", epsilon: float | None = None) -> LocalMLP:
    return LocalMLP(EpsilonHighway, 784, width, hidden, depth, 10, distance, epsilon_mode, epsilon)


@register_model("plain-mlp", input_shape=(1, 28, 28), dataset="fashion-mnist",
                summary="plain ReLU MLP, the local MLPs' baseline, Fashion-MNIST")
def plain_mlp(width: int = 87, depth: int = 2) -> PlainMLP:
    return PlainMLP(784, width, depth, 10)


@register_model("metric-resnet20", input_shape=(3, 32, 32), dataset="cifar10",
                summary="ResNet-20 with metric convolutions, CIFAR-10")
def metric_resnet20(metric: str = "l2") -> MetricResNet20:
    return MetricResNet20(metric)


@register_model("metric-resnet20-fashion", input_shape=(1, 28, 28), dataset="fashion-mnist",
                summary="ResNet-20 with metric convolutions on grey 28x28 images (Fashion-MNIST stand-in "
                        "for CIFAR-10)")
def metric_resnet20_fashion(metric: str = "l2") -> MetricResNet20:
    return MetricResNet20(metric, in_channels=1)
