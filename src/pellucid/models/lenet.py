"""A LeNet-style ReLU CNN: the conventional black-box baseline for the white-box network."""

from __future__ import annotations

import torch
from torch import nn

from pellucid.models.registry import register_model


class LeNet(nn.Module):
    """``conv5x5(1->6, pad 2) -> ReLU -> pool2 -> conv5x5(6->16) -> ReLU -> pool2 -> 400 -> 120 -> 84 -> K``.

    Input: images in [0, 1], ``(B, 1, 28, 28)``; output: one logit per class. Shapes:
    ``28 -> 28 -> 14`` then ``14 -> 10 -> 5``, so the flattened features are ``16 * 5 * 5 = 400``.
    Parameters: ``156 + 2,416 + 48,120 + 10,164 + (84 K + K)``, i.e. 61,026 for ``K = 2`` (61,706
    for the usual ``K = 10``). Every ReLU and pool is its own module and ``forward`` has no input
    checks or data-dependent branches, so ``torch.fx`` traces it and explainers see each call site.
    """

    def __init__(self, n_classes: int = 2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("lenet-mnist35", input_shape=(1, 28, 28), dataset="mnist", classes=(3, 5))
def lenet_mnist35(**kwargs) -> LeNet:
    """LeNet-style ReLU CNN baseline for MNIST 3 vs 5 (61,026 parameters)."""
    return LeNet(**kwargs)


@register_model("lenet-mnist10", input_shape=(1, 28, 28), dataset="mnist")
def lenet_mnist10(**kwargs) -> LeNet:
    """LeNet-style ReLU CNN baseline for the 10 MNIST digits (61,706 parameters)."""
    return LeNet(**{"n_classes": 10, **kwargs})


@register_model("lenet-fashion10", input_shape=(1, 28, 28), dataset="fashion-mnist")
def lenet_fashion10(**kwargs) -> LeNet:
    """LeNet-style ReLU CNN baseline for the 10 Fashion-MNIST classes (61,706 parameters)."""
    return LeNet(**{"n_classes": 10, **kwargs})
