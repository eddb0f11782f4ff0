"""TwoStep: a learnable ternary squashing of pixels into OFF / MEH / ON levels (Sec. 3.1)."""

from __future__ import annotations

import torch
from torch import nn


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

    def _internal(self, xt, big_t, s, a):
        sigma = big_t / (s + big_t.abs())
        return a * (self._u(xt, big_t, s) + sigma) / sigma.abs()

    def _external(self, xt, big_t, s, a):
        ends = xt.new_tensor([-1.0, 1.0])
        d = self._u(ends, big_t, s).abs().max() / (1 - a)  # batch-independent max|u|
        return self._u(xt, big_t, s) / d + torch.sign(big_t) * a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xt = 2 * x - 1
        big_t0, big_t1 = 2 * self.t0 - 1, 2 * self.t1 - 1
        s0, s1, s2, s3 = self.scales.unbind()
        return torch.where(
            xt < 0,
            torch.where(xt < big_t0, self._external(xt, big_t0, s0, self.a0),
                        self._internal(xt, big_t0, s1, self.a0)),
            torch.where(xt < big_t1, self._internal(xt, big_t1, s2, self.a1),
                        self._external(xt, big_t1, s3, self.a1)))

    @torch.no_grad()
    def project_(self) -> None:
        self.a0.clamp_(0.01, 0.99)
        self.a1.clamp_(0.01, 0.99)
        self.t0.clamp_(0.01, 0.49)
        self.t1.clamp_(0.51, 0.99)
        self.scales.clamp_(0.001, 2.0)

    def extra_repr(self) -> str:
        return (f"t0={self.t0.item():.3f}, t1={self.t1.item():.3f}, a0={self.a0.item():.3f}, "
                f"a1={self.a1.item():.3f}")
