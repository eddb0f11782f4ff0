"""Convolutional semantic features posed by fixed rotations (Sec. 3.2)."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from pellucid.nn.semantic.kernels import correlation_scores, max_correlation
from pellucid.nn.geometry import rotate
from pellucid.nn.semantic.base import SemanticFeatures, normalize


class RotationConvFeatures(SemanticFeatures):
    r"""``y = ReLU(max_{k,p} (x \star g_{k,p}) / \sqrt{K^2})``: the best-matching rotated kernel per pixel.

    Base kernels :math:`w_k` (``K x K``, unit L2, initialised as a centred identity plus
    :math:`\mathcal N(0, 0.1^2)`), posed by ``n_rotations`` fixed angles :math:`360 p / P`
    (bilinear, about the centre pixel), each posed kernel renormalised to unit L2. The max runs over
    all kernels and poses together, so the output has one channel; pose index = ``k * P + p``.
    """

    def __init__(self, n_kernels: int = 2, kernel_size: int = 5, n_rotations: int = 32,
                 init_noise: float = 0.1) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("kernel_size must be odd (rotation about the centre pixel)")
        self.init_noise = init_noise
        self.kernels = nn.Parameter(torch.empty(n_kernels, kernel_size, kernel_size))  # (K, k, k)
        self.reset_parameters()
        self.register_buffer("angles", torch.arange(n_rotations) * (360.0 / n_rotations),
                             persistent=False)
        self.scale = math.sqrt(kernel_size * kernel_size)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Redraw the base kernels: centred identity plus ``N(0, init_noise^2)``, unit L2."""
        k = self.kernels.shape[-1]
        w = torch.zeros_like(self.kernels)
        w[:, k // 2, k // 2] = 1.0
        w += self.init_noise * torch.randn_like(w)
        self.kernels.copy_(normalize(w))

    def posed_weights(self) -> torch.Tensor:
        k = self.kernels.shape[-1]
        posed = normalize(rotate(self.kernels, self.angles), start_dim=2)  # (K, P, k, k)
        return posed.reshape(1, -1, k, k)  # (1, K*P, k, k): one feature, K*P poses

    def match(self, x: torch.Tensor, posed: torch.Tensor) -> torch.Tensor:
        """All ``K*P`` scores ``(B, 1, K*P, H, W)`` (for inspection; forward uses the fused max)."""
        k = posed.shape[-1]
        return F.conv2d(x, posed.reshape(-1, 1, k, k), padding=k // 2).unsqueeze(1)

    def forward(self, x: torch.Tensor, return_poses: bool = False):
        # same result as the base class's max over match(), without materialising K*P maps
        k = (posed := self._posed()).shape[-1]
        best, pose = max_correlation(x, posed.reshape(-1, 1, k, k), return_index=return_poses)
        out = self.activation(best)  # (B, 1, H, W)
        return (out, pose.unsqueeze(1)) if return_poses else out  # pose: (B, H, W) -> (B, 1, H, W)

    relu_activation = True

    def activation(self, scores: torch.Tensor, relu: Callable[[torch.Tensor], torch.Tensor] = F.relu
                   ) -> torch.Tensor:
        return relu(scores / self.scale)

    def excitation_forward(self, gates: Any, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with ``gates.max`` over the ``K*P`` posed kernels and ``gates.relu``.

        All ``K*P`` score maps are materialised (``(B, K*P, H, W)``), in the same blocks as the
        fused forward, so their max is bit-identical to it.
        """
        k = (posed := self._posed()).shape[-1]
        scores = correlation_scores(x, posed.reshape(-1, 1, k, k))  # (B, K*P, H, W)
        return self.activation(gates.max(scores, dim=1, keepdim=True), gates.relu)  # (B, 1, H, W)

    @torch.no_grad()
    def project_(self) -> None:
        self.kernels.copy_(normalize(self.kernels))
