"""The 4-layer CNN of Madry et al. 2018 ("Towards deep learning models resistant to adversarial
attacks", MNIST challenge): the usual large reference baseline for MNIST robustness."""

from __future__ import annotations

import torch
from torch import nn

from pellucid.models.registry import register_model


class MadryCNN(nn.Module):
    """``conv5x5(1->32, pad 2) -> ReLU -> pool2 -> conv5x5(32->64, pad 2) -> ReLU -> pool2 ->
    3136 -> 1024 -> K``.

    Input: images in [0, 1], ``(B, 1, 28, 28)``. Parameters: ``832 + 51,264 + 3,212,288 +
    (1024 K + K)``, i.e. 3,274,634 for ``K = 10``: about 80 times the 10-class white-box network,
    which is why it marks the ceiling rather than a same-size comparison. Every ReLU and pool is
    its own module, so ``torch.fx`` traces it and explainers see each call site.
    """

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 7 * 7, 1024), nn.ReLU(), nn.Linear(1024, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("madry-cnn-mnist10", input_shape=(1, 28, 28), dataset="mnist")
def madry_cnn_mnist10(**kwargs) -> MadryCNN:
    """Madry et al.'s 4-layer CNN for the 10 MNIST digits (3,274,634 parameters)."""
    return MadryCNN(**kwargs)


@register_model("madry-cnn-fashion10", input_shape=(1, 28, 28), dataset="fashion-mnist")
def madry_cnn_fashion10(**kwargs) -> MadryCNN:
    """Madry et al.'s 4-layer CNN for the 10 Fashion-MNIST classes (3,274,634 parameters)."""
    return MadryCNN(**kwargs)
