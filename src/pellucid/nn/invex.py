"""Learnable invex distances: a Euclidean distance measured after an invertible map.

``y_j = -||g(x) - c_j||_2 e^{t} + b_j`` with ``g = ActNorm o (I + r) o ActNorm``. When ``g`` is a
bijection (``r`` contractive: spectral norm of each layer <= ``lipschitz`` < 1, LeakyReLU(0.1)
is 1-Lipschitz, so ``I + r`` is invertible, i-ResNet style) every ``x -> ||g(x) - c_j||`` is invex:
its only stationary point is its global minimum ``g^{-1}(c_j)``. "Ordinary" is the same network
without the spectral normalisation (no invexity guarantee).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from pellucid.nn.distance import check_features, lp_distance

__all__ = ["ActNorm", "InvertibleResidual", "InvexDistance"]


class ActNorm(nn.Module):
    """``y = (x - m) e^{-s}`` per feature; ``m``, ``s`` set from the first training batch (Glow)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(features))
        self.log_scale = nn.Parameter(torch.zeros(features))
        self.register_buffer("initialised", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not bool(self.initialised):
            with torch.no_grad():
                self.shift.copy_(x.mean(0))
                self.log_scale.copy_(x.std(0).clamp_min(1e-3).log())
                self.initialised.fill_(True)
        return (x - self.shift) * (-self.log_scale).exp()

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.log_scale.exp() + self.shift


class InvertibleResidual(nn.Module):
    """``u = x + r(x)``, ``r = L_2 o LeakyReLU(0.1) o L_1``; with ``contractive=True`` each ``L`` is
    spectrally normalised and scaled by ``sqrt(lipschitz)`` so ``Lip(r) <= lipschitz < 1``."""

    def __init__(self, features: int, hidden: int, lipschitz: float = 0.97, contractive: bool = True) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(features, hidden), nn.Linear(hidden, features)
        self.contractive, self.lipschitz = contractive, lipschitz
        if contractive:
            self.first, self.second = spectral_norm(self.first), spectral_norm(self.second)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        gain = math.sqrt(self.lipschitz) if self.contractive else 1.0
        return gain * self.second(F.leaky_relu(gain * self.first(x), 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual(x)

    @torch.no_grad()
    def inverse(self, u: torch.Tensor, iterations: int = 100) -> torch.Tensor:
        """Fixed point ``x = u - r(x)`` (converges geometrically when contractive)."""
        x = u.clone()
        for _ in range(iterations):
            x = u - self.residual(x)
        return x


class InvexDistance(nn.Module):
    r"""``y_j = -||g(x) - c_j|| e^{t} + b_j``, ``g = ActNorm -> I + r -> ActNorm`` (see module doc).

    ``contractive=False`` gives the paper's "ordinary" network for comparison.
    """

    def __init__(self, in_features: int, out_features: int, hidden: int = 500,
                 contractive: bool = True, lipschitz: float = 0.97) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.flow = nn.Sequential(ActNorm(in_features),
                                  InvertibleResidual(in_features, hidden, lipschitz, contractive),
                                  ActNorm(in_features))
        self.centres = nn.Parameter(torch.randn(out_features, in_features) / 3)
        self.log_scale = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_features(x, self.in_features)
        return -lp_distance(self.flow(x), self.centres, 2.0) * self.log_scale.exp() + self.bias
