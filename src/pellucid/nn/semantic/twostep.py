"""TwoStep: a learnable ternary squashing of pixels into OFF / MEH / ON levels (Sec. 3.1)."""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable


class TwoStep(nn.Module):
    r"""Piecewise squashing of ``x`` in [0, 1] to about [-1, 1] with two learnable steps.

    With :math:`\tilde x = 2x - 1`, thresholds :math:`T_0 = 2t_0 - 1 < 0 < T_1 = 2t_1 - 1`,
    :math:`u(T, s) = (\tilde x - T) / (s + |\tilde x - T|)` and level :math:`a(T) = a_1` if
    :math:`T > 0` else :math:`a_0`:

    - internal(T, s): :math:`\sigma = T/(s + |T|)`, :math:`y = a(T)(u + \sigma)/|\sigma|`
      (maps :math:`T \mapsto \mathrm{sgn}(T)\,a` and :math:`0 \mapsto 0`);
    - external(T, s): :math:`D = \max|u| / (1 - a(T))`, :math:`y = u / D + \mathrm{sgn}(T)\,a(T)`.

    Pieces: :math:`\tilde x < T_0` external(T0, s0); :math:`T_0 \le \tilde x < 0` internal(T0, s1);
    :math:`0 \le \tilde x < T_1` internal(T1, s2); :math:`\tilde x \ge T_1` external(T1, s3).

    ``max|u|`` is taken over the input range, :math:`\tilde x \in \{-1, 1\}`, not over the batch
    (the reference took it over the whole batch, so one image's output depended on the others;
    on MNIST both give the same numbers because pixels 0 and 1 occur).

    In eval mode (attacks, validation, explanations) the layer runs a fused path that evaluates
    only each pixel's own piece and has a hand-written input gradient; like the posed weights of
    :class:`~pellucid.nn.SemanticFeatures`, its parameters then get no gradient. The fused path
    applies the same float operations in the same order as autograd does on the train-mode
    graph, so values and input gradients are bit-identical (up to the sign of a zero gradient).
    """

    def __init__(self, a0: float = 0.5, a1: float = 0.5, t0: float = 0.25, t1: float = 0.75,
                 scale: float = 0.1) -> None:
        super().__init__()
        self.a0 = nn.Parameter(torch.tensor(a0))
        self.a1 = nn.Parameter(torch.tensor(a1))
        self.t0 = nn.Parameter(torch.tensor(t0))
        self.t1 = nn.Parameter(torch.tensor(t1))
        self.scales = nn.Parameter(torch.full((4,), scale))

    @staticmethod
    def _u(xt: torch.Tensor, big_t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        d = xt - big_t
        return d / (s + d.abs())

    @staticmethod
    def _sigma(big_t, s):
        return big_t / (s + big_t.abs())

    def _internal(self, xt, big_t, s, a):
        sigma = self._sigma(big_t, s)
        return a * (self._u(xt, big_t, s) + sigma) / sigma.abs()

    def _external_scale(self, big_t, s, a):
        ends = big_t.new_tensor([-1.0, 1.0])
        return self._u(ends, big_t, s).abs().max() / (1 - a)  # batch-independent max|u|

    def _external(self, xt, big_t, s, a):
        return self._u(xt, big_t, s) / self._external_scale(big_t, s, a) + torch.sign(big_t) * a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and x.dtype == self.t0.dtype:
            return self._fused(x)
        xt = 2 * x - 1
        big_t0, big_t1 = 2 * self.t0 - 1, 2 * self.t1 - 1
        s0, s1, s2, s3 = self.scales.unbind()
        # Piece selection by lerp with exact 0/1 weights instead of torch.where: same values and
        # the same gradients (g * 1, g * 0), but where and its backward run ~5x slower on CPU.
        with torch.no_grad():
            neg, below_t0, below_t1 = (_is_negative(v) for v in (xt, xt - big_t0, xt - big_t1))
        # Pieces built in a fixed order: it sets autograd's order of adding the parameters'
        # per-piece gradients, so reordering them changes the trained weights' last bits.
        ext0 = self._external(xt, big_t0, s0, self.a0)
        int0 = self._internal(xt, big_t0, s1, self.a0)
        negative_side = torch.lerp(int0, ext0, below_t0)
        int1 = self._internal(xt, big_t1, s2, self.a1)
        ext1 = self._external(xt, big_t1, s3, self.a1)
        positive_side = torch.lerp(ext1, int1, below_t1)
        return torch.lerp(positive_side, negative_side, neg)

    @torch.no_grad()
    def _piece_constants(self) -> dict[str, torch.Tensor]:
        """Per-piece scalars, stacked as ``[negative side, positive side]`` (or 4 pieces for s)."""
        big_t = torch.stack([2 * self.t0 - 1, 2 * self.t1 - 1])
        a = torch.stack([self.a0, self.a1])
        s = self.scales
        sigma = torch.stack([self._sigma(big_t[0], s[1]), self._sigma(big_t[1], s[2])])
        scale = torch.stack([self._external_scale(big_t[0], s[0], a[0]),
                             self._external_scale(big_t[1], s[3], a[1])])
        return {"T": big_t, "a": a, "sigma": sigma, "sigma_abs": sigma.abs(), "D": scale,
                "level": torch.sign(big_t) * a, "s": s}

    def _fused(self, x: torch.Tensor) -> torch.Tensor:
        return _TwoStepInference.apply(x, self._piece_constants())

    @torch.no_grad()
    def project_(self) -> None:
        self.a0.clamp_(0.01, 0.99)
        self.a1.clamp_(0.01, 0.99)
        self.t0.clamp_(0.01, 0.49)
        self.t1.clamp_(0.51, 0.99)
        self.scales.clamp_(0.001, 2.0)

    def excitation_sites(self) -> tuple[tuple[str, str], ...]:
        """For excitation pullbacks: one site, kept as it is. TwoStep is a continuous, monotone
        per-pixel squashing (its pieces meet at the thresholds), not a 0/1 gate or a max, so there is
        nothing to soften; it runs unchanged (a leaf of the pullback's trace)."""
        return (("pixel squashing (continuous, monotone)", "kept"),)

    def extra_repr(self) -> str:
        return (f"t0={self.t0.item():.3f}, t1={self.t1.item():.3f}, a0={self.a0.item():.3f}, "
                f"a1={self.a1.item():.3f}")


def _is_negative(v: torch.Tensor) -> torch.Tensor:
    """``1.0`` where ``v < 0``, else ``0.0`` (NaN stays NaN), exactly: ceil(clamp(-v, 0, 1))."""
    return v.neg().clamp_(0, 1).ceil_()


def _pick(neg: torch.Tensor, pos: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
    """``pair[0]`` on the negative side, ``pair[1]`` on the positive side, per pixel.

    ``neg``/``pos`` are exact 0/1 floats, so one product is exactly 0 and the other exactly the
    constant: the sum is exact. (``torch.where`` gives the same bits but runs ~5x slower here.)
    """
    return torch.addcmul(neg * pair[0], pos, pair[1])


class _TwoStepInference(torch.autograd.Function):
    """TwoStep with constant parameters: each pixel's own piece only, input gradient by hand.

    The train-mode graph evaluates all four pieces on every pixel and lets ``torch.where`` pick;
    autograd then back-propagates zeros through the three unpicked pieces. Here each pixel
    gathers its piece's constants and runs one chain. Every arithmetic operation below is the one
    autograd runs for the picked piece (``div``: ``g / q`` and ``-g * ((d / q) / q)``; ``abs``:
    ``g * sgn(d)``; ``mul``: ``g * a``), in the same order, so the bits agree; the selections
    (:func:`_pick`, ``lerp`` with a 0/1 weight) are exact.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, c: dict[str, torch.Tensor]) -> torch.Tensor:
        xt = 2 * x - 1
        neg = _is_negative(xt)
        pos = 1 - neg
        d = xt - _pick(neg, pos, c["T"])
        # negative side: internal iff xt >= T0 (d >= 0); positive side: internal iff xt < T1 (d < 0)
        internal = (_is_negative(d) - neg).abs_()
        external = 1 - internal
        s = c["s"]
        s_pix = ((neg * external).mul_(s[0]).addcmul_(neg * internal, s[1])
                 .addcmul_(pos * internal, s[2]).addcmul_(pos * external, s[3]))
        q = s_pix + d.abs()
        u = d / q
        a, sigma_abs, scale = (_pick(neg, pos, c[k]) for k in ("a", "sigma_abs", "D"))
        y_internal = a * (u + _pick(neg, pos, c["sigma"])) / sigma_abs
        y_external = u / scale + _pick(neg, pos, c["level"])
        ctx.save_for_backward(internal, d, q, a, sigma_abs, scale)
        return torch.lerp(y_external, y_internal, internal)  # exact for a 0/1 weight

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):
        internal, d, q, a, sigma_abs, scale = ctx.saved_tensors
        g_u = torch.lerp(g / scale, g / sigma_abs * a, internal)
        g_d = g_u / q + (-g_u * ((d / q) / q)) * d.sgn()
        return g_d * 2, None
