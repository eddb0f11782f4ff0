"""Affine semantic features: whole-image templates with learnable affine poses (Sec. 3.3)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pellucid.nn.geometry import warp_affine
from pellucid.nn.semantic.base import SemanticFeatures, normalize


class AffineFeatures(SemanticFeatures):
    r"""``y[b, f] = ReLU(max_p <x_b, g_{f,p}>)``, ``g_{f,p} = normalize(warp(pad(w_f), M_{f,p}))``.

    Each feature :math:`w_f` is an ``S x S`` patch (unit L2) zero-padded to the input size; each has
    its own ``n_poses`` learnable pixel-space affine maps :math:`M_{f,p}` (2 x 3, source -> destination
    about pixel (0, 0)), initialised to :math:`I + \mathcal N(0, 0.01^2)` with a
    :math:`\mathcal N(0, 1)`-pixel translation added. Poses are unconstrained.
    """

    def __init__(self, n_features: int = 8, n_poses: int = 32, patch_size: int = 20,
                 image_size: int = 28, init_a: float = 2.2236, init_translation: float = 1.0) -> None:
        super().__init__()
        if (image_size - patch_size) % 2:
            raise ValueError("image_size - patch_size must be even (symmetric padding)")
        self.init_a, self.init_translation = init_a, init_translation
        self.features = nn.Parameter(torch.empty(n_features, patch_size * patch_size))  # (F, S*S)
        self.poses = nn.Parameter(torch.empty(n_features, n_poses, 2, 3))  # pixel coordinates
        self.patch_size, self.image_size = patch_size, image_size
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Redraw features (Kaiming-uniform, unit L2) and poses (``I + N(0, 0.01^2)``, plus an
        ``N(0, init_translation^2)``-pixel translation)."""
        n_features, n_poses = self.poses.shape[:2]
        w = torch.empty_like(self.features)
        nn.init.kaiming_uniform_(w, a=self.init_a)
        self.features.copy_(normalize(w))
        like = dict(device=self.poses.device, dtype=self.poses.dtype)  # not the default device
        m = torch.eye(2, 3, **like).repeat(n_features, n_poses, 1, 1) + 0.01 * torch.randn(n_features, n_poses, 2, 3,
                                                                                           **like)
        m[..., 2] += self.init_translation * torch.randn(n_features, n_poses, 2, **like)
        self.poses.copy_(m)

    def padded_features(self) -> torch.Tensor:
        """Base features as ``(F, H, W)`` images (patch zero-padded to the input size)."""
        s, pad = self.patch_size, (self.image_size - self.patch_size) // 2
        return F.pad(self.features.view(-1, s, s), (pad, pad, pad, pad))

    def posed_weights(self) -> torch.Tensor:
        return normalize(warp_affine(self.padded_features(), self.poses), start_dim=2)  # (F, P, H, W)

    def match(self, x: torch.Tensor, posed: torch.Tensor) -> torch.Tensor:
        n_feat, n_pose = posed.shape[:2]
        scores = x.flatten(1) @ posed.reshape(n_feat * n_pose, -1).T  # (B, F*P)
        return scores.view(-1, n_feat, n_pose)  # (B, F, P)

    relu_activation = True

    def activation(self, scores: torch.Tensor, relu: Callable[[torch.Tensor], torch.Tensor] = F.relu
                   ) -> torch.Tensor:
        return relu(scores)

    @torch.no_grad()
    def project_(self) -> None:
        self.features.copy_(normalize(self.features))
