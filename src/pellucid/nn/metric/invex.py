"""Learnable invex distances: one invex function of the difference to each centre.

``y_j = f(x - c_j) e^{t}`` with ``f(z) = ||g(z) - r||_2``, ``g = ActNorm o (I + R) o ActNorm`` and
``r`` a learned reference point (the construction behind the paper's Table 1 row "invex"). When
``g`` is a bijection, ``f`` is invex: ``\\nabla f = J_g^T (g(z) - r) / ||g(z) - r||`` vanishes only
where ``g(z) = r`` (``J_g`` is invertible), so ``f``'s only stationary point is its global minimum
``z^* = g^{-1}(r)`` and every neuron fires most at ``x = c_j + z^*``. ``I + R`` is invertible when
``Lip(R) < 1`` (i-ResNet): each linear layer of ``R`` is spectrally normalised to ``<= 0.97`` and
LeakyReLU(0.1) is 1-Lipschitz. "Ordinary" is the same network without the spectral
normalisation (no invexity guarantee). The output is the distance itself (larger = farther),
as in the paper's invex row, where ``(1 - f_{paper}) e^{t}`` with ``f_{paper} = -||g(z) - r|| e^{s} + b``
is this up to constants. (Its convex row, like :class:`ConvexDistance`, is negated instead.) The
sign matters in the metric MLP: BatchNorm without affine and LayerNorm keep it up to the ELU.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from pellucid.nn.metric.distance import check_features

torch.fx.wrap("check_features")  # recorded as one call in traced copies (see nn.distance)

__all__ = ["ActNorm", "InvertibleResidual", "InvexDistance", "SoftSpectralNorm"]


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
                self.initialise_from(x)
                self.initialised.fill_(True)
        return self.transform(x)

    def initialise_from(self, x: torch.Tensor) -> None:
        """Zero mean, unit std per feature on the batch ``x`` (called once, under ``no_grad``)."""
        self.shift.copy_(x.mean(0))
        self.log_scale.copy_(x.std(0).clamp_min(1e-3).log())

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) * (-self.log_scale).exp()

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.log_scale.exp() + self.shift


class SoftSpectralNorm(nn.Module):
    r"""Weight parametrisation ``W / max(1, \sigma(W) / c)``: the spectral norm is capped at ``c``.

    ``\sigma`` is estimated by power iteration (``n_power_iterations`` per training forward, the
    vectors kept between calls, as in i-ResNet). The estimate ``u^T W v`` is a lower bound on
    ``\sigma``, so while the weights move the cap holds up to its lag. Unlike ``torch.nn.utils.parametrizations.
    spectral_norm``, which always rescales to ``\sigma = 1``, a weight already below the cap is
    left unchanged.
    """

    def __init__(self, weight: torch.Tensor, coeff: float = 0.97, n_power_iterations: int = 5) -> None:
        super().__init__()
        self.coeff, self.n_power_iterations = coeff, n_power_iterations
        rows, cols = weight.shape
        self.register_buffer("left", F.normalize(weight.new_empty(rows).normal_(), dim=0))
        self.register_buffer("right", F.normalize(weight.new_empty(cols).normal_(), dim=0))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                for _ in range(self.n_power_iterations):
                    self.right.copy_(F.normalize(weight.t() @ self.left, dim=0))
                    self.left.copy_(F.normalize(weight @ self.right, dim=0))
        sigma = self.left.clone() @ weight @ self.right.clone()  # clones: buffers change in place later
        return weight / torch.clamp(sigma / self.coeff, min=1.0)


class InvertibleResidual(nn.Module):
    """``u = z + R(z)``, ``R = L_3 o LeakyReLU(0.1) o L_2 o LeakyReLU(0.1) o L_1`` (two hidden layers).

    ``contractive=True`` caps the spectral norm of every ``L`` at ``lipschitz`` (< 1), so
    ``Lip(R) <= lipschitz^3 < 1`` and the block is a bijection with the fixed-point inverse below.
    """

    def __init__(self, features: int, hidden: int, lipschitz: float = 0.97, contractive: bool = True) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(features, hidden), nn.Linear(hidden, hidden),
                                     nn.Linear(hidden, features)])
        self.contractive, self.lipschitz = contractive, lipschitz
        if contractive:
            for layer in self.layers:
                parametrize.register_parametrization(layer, "weight", SoftSpectralNorm(layer.weight, lipschitz))

    def residual(self, z: torch.Tensor) -> torch.Tensor:
        return self.residual_after_first(self.layers[0](z))

    def residual_after_first(self, u: torch.Tensor) -> torch.Tensor:
        """``R`` given the first layer's output ``u = L_1(z)``."""
        _, second, third = self.layers
        return third(F.leaky_relu(second(F.leaky_relu(u, 0.1)), 0.1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.residual(z)

    @torch.no_grad()
    def inverse(self, u: torch.Tensor, iterations: int = 100) -> torch.Tensor:
        """Fixed point ``z = u - R(z)`` (converges geometrically when contractive)."""
        z = u.clone()
        for _ in range(iterations):
            z = u - self.residual(z)
        return z


class InvexDistance(nn.Module):
    r"""``y_j = ||g(x - c_j) - r||_2 e^{t}``, ``g = ActNorm -> I + R -> ActNorm`` (see module doc).

    The shared ``g`` runs on all ``B H`` differences, so the cost grows with ``H`` like an MLP on
    a batch of ``B H``. Init: centres ``randn / 3``, reference ``r ~ U[-1, 1]^D``, ``t = 0``;
    the ActNorms initialise from the first training batch of differences.
    ``contractive=False`` gives the paper's "ordinary" network for comparison.
    """

    def __init__(self, in_features: int, out_features: int, hidden: int = 500,
                 contractive: bool = True, lipschitz: float = 0.97) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.centres = nn.Parameter(torch.randn(out_features, in_features) / 3)
        self.flow = nn.Sequential(ActNorm(in_features),
                                  InvertibleResidual(in_features, hidden, lipschitz, contractive),
                                  ActNorm(in_features))
        self.reference = nn.Parameter(torch.rand(in_features) * 2 - 1)
        self.log_scale = nn.Parameter(torch.zeros(()))

    def invex_value(self, x: torch.Tensor) -> torch.Tensor:
        r"""``f(x - c_j) = ||g(x - c_j) - r||`` for every pair, ``(B, H)``.

        Computes ``self.flow`` on the ``B H`` differences, except that the residual block's first
        layer, affine in ``z = (x - c_j - m) e^{-s}``, is split as ``L_1(z) = W'(x - m) - W' c_j + b``
        with ``W' = W_1 \mathrm{diag}(e^{-s})``: ``B + H`` rows of matrix product instead of ``B H``
        (a third of the network's multiply-adds), the same function.
        """
        check_features(x, self.in_features)
        (b, d), h = x.shape, self.out_features
        first_norm, block, last_norm = self.flow
        z = first_norm((x[:, None, :] - self.centres[None]).reshape(-1, d))  # (B H, D); inits ActNorm
        first = block.layers[0]
        weight, scale = first.weight, (-first_norm.log_scale).exp()  # weight read once: one power iteration
        u = (F.linear((x - first_norm.shift) * scale, weight, first.bias)[:, None]
             - F.linear(self.centres * scale, weight)[None])  # (B, H, hidden)
        g = last_norm(z + block.residual_after_first(u.reshape(b * h, -1)))
        return (g - self.reference).norm(dim=1).view(b, h)

    @torch.no_grad()
    def argmin_offset(self, iterations: int = 200) -> torch.Tensor:
        """``z^* = g^{-1}(r)``: each neuron's ``f`` is smallest (0) at ``x = c_j + z^*``."""
        first, block, last = self.flow
        return first.inverse(block.inverse(last.inverse(self.reference[None]), iterations))[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.invex_value(x) * self.log_scale.exp()
