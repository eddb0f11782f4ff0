r"""The research log's two disjunctive classifiers: a disjunction of conjunctions of parts, and a
directional (two-convolution) network ending in a soft OR per class.

Both end in ``SoftMaxPool(K) -> Scale``: class ``j``'s logit is ``s * tau log((1/g) sum_{i in
G_j} exp(z_i / tau))`` over its own group ``G_j`` of units, so each class is an OR of its units.
The log's task is CIFAR-10 planes (label 0) vs cars (label 1); the MNIST 3 vs 5 variants are
offline stand-ins with the same layers.

``positive=True`` gives the log's positively constrained variant: every convolution is a
:class:`~pellucid.nn.PositiveConv2d` (weights ``softplus(v) >= 0``) and every BatchNorm has no
affine rescaling (``affine=False``: it only centres and scales by the running statistics), so
every convolution adds up its input's evidence with non-negative weights. Registered as
``*-positive-*`` next to the unconstrained models.
"""

from __future__ import annotations

import torch
from torch import nn

from pellucid.errors import InvalidInputError
from pellucid.models.registry import register_model
from pellucid.nn.disjunctive.blocks import Mean, PositiveConv2d, Scale, SoftMaxPool

__all__ = ["DirectionalNet", "DisjunctionNet"]


def _check_positive_flag(positive) -> bool:
    if not isinstance(positive, bool):
        raise InvalidInputError(f"positive must be True or False, got {positive!r}")
    return positive


def _conv(positive: bool, in_channels: int, out_channels: int, kernel_size: int,
          stride: int = 1) -> nn.Module:
    """``Conv2d``, or ``PositiveConv2d`` (weights ``>= 0``) when ``positive``."""
    if positive:
        return PositiveConv2d(in_channels, out_channels, kernel_size, stride=stride)
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride)


class DisjunctionNet(nn.Module):
    r"""Disjunction of conjunctions: ``Conv2d(C, P, 10, stride 2) -> AdaptiveMaxPool2d(1) ->
    flatten -> BatchNorm1d(P) -> Mean(P / parts) -> SoftMaxPool(K) -> Scale``.

    Each of the ``P = channels`` filters is a part, present with strength ``u_p = BN(max_{h,w}
    conv_p(x))``; a conjunction averages ``parts`` consecutive parts, ``c_q = mean_{p in q} u_p``
    (``P / parts`` conjunctions); class ``j`` is the soft OR of its ``P / (parts K)`` consecutive
    conjunctions, ``y_j = s * SoftMaxPool(c)_j``. Defaults (the log's): ``P = 120``, ``parts = 5``
    (24 conjunctions, 12 per class for ``K = 2``). Any input of at least ``kernel_size`` pixels
    per side works (the max pool is global).

    ``positive=True``: ``PositiveConv2d`` instead of ``Conv2d`` and ``BatchNorm1d(P,
    affine=False)`` (see the module docstring).
    """

    def __init__(self, in_channels: int = 3, n_classes: int = 2, channels: int = 120,
                 parts: int = 5, kernel_size: int = 10, stride: int = 2,
                 temperature: float = 1.0, positive: bool = False) -> None:
        super().__init__()
        self.positive = _check_positive_flag(positive)
        if channels % parts or (channels // parts) % n_classes:
            raise InvalidInputError(f"channels={channels} must split into conjunctions of parts={parts} "
                                    f"whose number ({channels / parts:g}) is a multiple of "
                                    f"n_classes={n_classes}")
        self.features = nn.Sequential(
            _conv(positive, in_channels, channels, kernel_size, stride=stride),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.BatchNorm1d(channels, affine=not positive),
        )
        self.classifier = nn.Sequential(Mean(channels // parts), SoftMaxPool(n_classes, temperature),
                                        Scale())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class DirectionalNet(nn.Module):
    r"""``Conv2d(C, D, 10, stride 2) -> MaxPool2d(3, padding=pool_padding) -> BatchNorm2d(D) ->
    GELU -> Conv2d(D, D, 4) -> AdaptiveMaxPool2d(1) -> flatten -> SoftMaxPool(K) -> Scale``.

    Class ``j`` is the soft OR of its ``D / K`` consecutive second-layer units, each the best
    (max over positions) response of a 4 x 4 arrangement of first-layer detectors. ``D = 120``
    (the log's). Spatial sizes for 32 x 32 (CIFAR): 32 -> 12 -> 4 -> 1. For 28 x 28 (MNIST) the
    first conv gives 10 x 10 and an unpadded 3 x 3 pool only 3 x 3, too small for the 4 x 4 conv,
    so the MNIST variants use ``pool_padding=1`` (10 -> 4, every pixel covered, ``-inf`` padding)
    and keep both convolutions as in the log.

    ``positive=True``: both convolutions are ``PositiveConv2d`` and the BatchNorm is
    ``BatchNorm2d(D, affine=False)`` (see the module docstring).
    """

    def __init__(self, in_channels: int = 3, n_classes: int = 2, channels: int = 120,
                 pool_padding: int = 0, temperature: float = 1.0, positive: bool = False) -> None:
        super().__init__()
        self.positive = _check_positive_flag(positive)
        if channels % n_classes:
            raise InvalidInputError(f"channels={channels} must be a multiple of n_classes={n_classes}")
        self.features = nn.Sequential(
            _conv(positive, in_channels, channels, 10, stride=2),
            nn.MaxPool2d(3, padding=pool_padding), nn.BatchNorm2d(channels, affine=not positive),
            nn.GELU(),
            _conv(positive, channels, channels, 4), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Sequential(SoftMaxPool(n_classes, temperature), Scale())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("disjunction-cifar-planes-cars", input_shape=(3, 32, 32), dataset="cifar10",
                classes=(0, 1))
def disjunction_cifar_planes_cars(**kwargs) -> DisjunctionNet:
    """Disjunction of conjunctions (120 parts, 24 conjunctions, soft OR) for CIFAR-10 planes vs cars."""
    return DisjunctionNet(**{"in_channels": 3, **kwargs})


@register_model("directional-cifar-planes-cars", input_shape=(3, 32, 32), dataset="cifar10",
                classes=(0, 1))
def directional_cifar_planes_cars(**kwargs) -> DirectionalNet:
    """Directional two-conv network with a soft OR per class for CIFAR-10 planes vs cars."""
    return DirectionalNet(**{"in_channels": 3, **kwargs})


@register_model("disjunction-mnist35", input_shape=(1, 28, 28), dataset="mnist", classes=(3, 5))
def disjunction_mnist35(**kwargs) -> DisjunctionNet:
    """Disjunction of conjunctions (120 parts, 24 conjunctions, soft OR) for MNIST 3 vs 5."""
    return DisjunctionNet(**{"in_channels": 1, **kwargs})


@register_model("directional-mnist35", input_shape=(1, 28, 28), dataset="mnist", classes=(3, 5))
def directional_mnist35(**kwargs) -> DirectionalNet:
    """Directional two-conv network with a soft OR per class for MNIST 3 vs 5 (pool padding 1)."""
    return DirectionalNet(**{"in_channels": 1, "pool_padding": 1, **kwargs})


@register_model("disjunction-positive-cifar-planes-cars", input_shape=(3, 32, 32), dataset="cifar10",
                classes=(0, 1))
def disjunction_positive_cifar_planes_cars(**kwargs) -> DisjunctionNet:
    """Disjunction of conjunctions, non-negative conv weights, non-affine BatchNorm: CIFAR-10 planes/cars."""
    return DisjunctionNet(**{"in_channels": 3, "positive": True, **kwargs})


@register_model("directional-positive-cifar-planes-cars", input_shape=(3, 32, 32), dataset="cifar10",
                classes=(0, 1))
def directional_positive_cifar_planes_cars(**kwargs) -> DirectionalNet:
    """Directional two-conv network, non-negative conv weights, non-affine BatchNorm: CIFAR-10 planes/cars."""
    return DirectionalNet(**{"in_channels": 3, "positive": True, **kwargs})


@register_model("disjunction-positive-mnist35", input_shape=(1, 28, 28), dataset="mnist",
                classes=(3, 5))
def disjunction_positive_mnist35(**kwargs) -> DisjunctionNet:
    """Disjunction of conjunctions, non-negative conv weights, non-affine BatchNorm: MNIST 3 vs 5."""
    return DisjunctionNet(**{"in_channels": 1, "positive": True, **kwargs})


@register_model("directional-positive-mnist35", input_shape=(1, 28, 28), dataset="mnist",
                classes=(3, 5))
def directional_positive_mnist35(**kwargs) -> DirectionalNet:
    """Directional two-conv network, non-negative conv weights, non-affine BatchNorm: MNIST 3 vs 5.

    Pool padding 1."""
    return DirectionalNet(**{"in_channels": 1, "pool_padding": 1, "positive": True, **kwargs})
