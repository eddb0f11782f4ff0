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
from torch.autograd.function import once_differentiable
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
        return self.layers[2](self.hidden_after_first(u))

    def hidden_after_first(self, u: torch.Tensor) -> torch.Tensor:
        """The last hidden activation ``a = LeakyReLU(L_2(LeakyReLU(u)))``, so ``R = L_3(a)``."""
        return F.leaky_relu(self.layers[1](F.leaky_relu(u, 0.1)), 0.1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.residual(z)

    @torch.no_grad()
    def inverse(self, u: torch.Tensor, iterations: int = 100) -> torch.Tensor:
        """Fixed point ``z = u - R(z)`` (converges geometrically when contractive)."""
        z = u.clone()
        for _ in range(iterations):
            z = u - self.residual(z)
        return z


def _broadcast_difference(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``rows[:, None] - cols[None]``, ``(B, H, K)``, as ``rows[:, None] + (-cols)[None]``.

    The same values bit for bit (``a - b`` is ``a + (-b)`` in IEEE arithmetic), and the same
    gradients: autograd of the subtraction negates the whole ``(B, H, K)`` gradient before summing
    it over ``B``; here the ``(H, K)`` sum is negated, which is exact. At the Table 1 size of the
    invex cells (``B H K`` = 12.5M) that pass was 4 % of a training step.
    """
    return rows[:, None] + (-cols)[None]


class _QuadraticForm(torch.autograd.Function):
    """``q_n = a_n^T Q a_n`` for rows ``a_n`` and a symmetric ``Q``, with the backward written out.

    Autograd of ``((a @ Q) * a).sum(-1)`` runs two matrix products backward (``dQ`` and
    ``dL/d(a Q) Q^T``); for a symmetric ``Q``, ``dq/da = 2 Q a`` is the forward's own ``a Q``, so
    one product (``dQ = sum_n g_n a_n a_n^T``) is enough.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        aq = a @ q
        ctx.save_for_backward(a, aq)
        return (aq * a).sum(-1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        a, aq = ctx.saved_tensors
        weighted = a * grad[:, None]
        grad_a = aq * (2 * grad)[:, None] if ctx.needs_input_grad[0] else None  # = 2 aq g: one pass
        grad_q = weighted.t() @ a if ctx.needs_input_grad[1] else None
        return grad_a, grad_q


class InvexDistance(nn.Module):
    r"""``y_j = ||g(x - c_j) - r||_2 e^{t}``, ``g = ActNorm -> I + R -> ActNorm`` (see module doc).

    The shared ``g`` runs on all ``B H`` differences, so the cost grows with ``H`` like an MLP on
    a batch of ``B H``. Init: centres ``randn / 3``, reference ``r ~ U[-1, 1]^D``, ``t = 0``;
    the ActNorms initialise from the first training batch of differences.
    ``contractive=False`` gives the paper's "ordinary" network for comparison.

    ``factored_output=True`` computes the same function with fewer multiply-adds (see
    :meth:`invex_value`): about 1.5x faster at the Table 1 sizes, equal up to rounding, but less
    accurate very near a neuron's minimum. It is how the value is computed, not what: a model may
    switch it at any time.
    """

    def __init__(self, in_features: int, out_features: int, hidden: int = 500,
                 contractive: bool = True, lipschitz: float = 0.97, factored_output: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.factored_output = factored_output
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

        With ``factored_output`` the last layer ``L_3`` (``hidden -> D``) is not run on the ``B H``
        rows either. With ``a`` the last hidden activation, ``e^{-s_2}`` the last ActNorm's scale and
        ``\tilde W = \mathrm{diag}(e^{-s_2}) W_3``, ``g - r = p + \tilde W a`` where
        ``p = e^{-s_2}(z + b_3 - m_2) - r`` is affine in ``x - c_j``, so

        ``||g - r||^2 = ||p||^2 + 2 (\tilde W^T p) . a + a^T Q a``,  ``Q = \tilde W^T \tilde W``,

        and ``p`` and ``\tilde W^T p`` split over ``x`` and ``c_j`` as the first layer does
        (``||p||^2`` by expanding the square), so no ``(B H, D)`` tensor is formed. Per row that is
        ``hidden^2`` multiply-adds for ``a^T Q a`` and as many backward (for ``dQ``) instead of
        ``3 hidden D`` for ``L_3`` forward and backward. A sum of three terms, it loses the
        relative accuracy of the difference where ``g`` is near ``r`` (the square root of the
        rounding instead of 0 at a neuron's minimum). The first training call, which sets the
        ActNorms from the data, runs the direct path.
        """
        check_features(x, self.in_features)
        (b, d), h = x.shape, self.out_features
        first_norm, block, last_norm = self.flow
        # the first training call sets both ActNorms from the data: the direct path, once
        factored = self.factored_output and not (
            self.training and not (bool(first_norm.initialised) and bool(last_norm.initialised)))
        if not factored:
            z = first_norm((x[:, None, :] - self.centres[None]).reshape(-1, d))  # (B H, D); inits ActNorm
        first = block.layers[0]
        weight, scale = first.weight, (-first_norm.log_scale).exp()  # weight read once: one power iteration
        u = _broadcast_difference(F.linear((x - first_norm.shift) * scale, weight, first.bias),
                                  F.linear(self.centres * scale, weight))  # (B, H, hidden)
        if factored:
            return self._factored_norm(x, block.hidden_after_first(u.reshape(b * h, -1)).view(b, h, -1))
        g = last_norm(z + block.residual_after_first(u.reshape(b * h, -1)))
        return (g - self.reference).norm(dim=1).view(b, h)

    def _factored_norm(self, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """``||g - r||``, ``(B, H)``, from the last hidden activation ``(B, H, hidden)`` (see above)."""
        first_norm, block, last_norm = self.flow
        last = block.layers[2]
        out_scale = (-last_norm.log_scale).exp()
        scaled = last.weight * out_scale[:, None]  # \tilde W, (D, hidden); weight read once
        # p = p_x - p_c with p_x = k (x - m_1) + offset, p_c = k c_j, k = e^{-s_2 - s_1}: z is never formed
        k = out_scale * (-first_norm.log_scale).exp()
        p_x = (x - first_norm.shift) * k + (last.bias - last_norm.shift) * out_scale - self.reference
        p_c = self.centres * k
        p_sq = p_x.square().sum(-1)[:, None] + p_c.square().sum(-1)[None] - 2 * p_x @ p_c.t()  # (B, H)
        cross = _broadcast_difference(p_x @ scaled, p_c @ scaled) * hidden  # (\tilde W^T p) a, per unit
        gram = scaled.t() @ scaled
        quadratic = _QuadraticForm.apply(hidden.reshape(-1, hidden.shape[-1]), (gram + gram.t()) / 2)
        squared = p_sq + 2 * cross.sum(-1) + quadratic.view_as(p_sq)
        positive = squared > 0
        return torch.where(positive, squared.clamp_min(torch.finfo(squared.dtype).tiny).sqrt(), 0)

    @torch.no_grad()
    def argmin_offset(self, iterations: int = 200) -> torch.Tensor:
        """``z^* = g^{-1}(r)``: each neuron's ``f`` is smallest (0) at ``x = c_j + z^*``."""
        first, block, last = self.flow
        return first.inverse(block.inverse(last.inverse(self.reference[None]), iterations))[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.invex_value(x) * self.log_scale.exp()
