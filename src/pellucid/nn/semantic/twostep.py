"""TwoStep: a learnable ternary squashing of pixels into OFF / MEH / ON levels (Sec. 3.1)."""

from __future__ import annotations

import threading

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

    In train mode on CPU (float32/float64, C kernels available, the input not needing a gradient)
    it runs :class:`_TwoStepTraining`: the same values, and parameter gradients bit-identical to
    autograd on the four-piece graph, about twice as fast; first order only, like the conv layer.
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

    @staticmethod
    def _internal(xt, big_t, s, a):
        sigma = TwoStep._sigma(big_t, s)
        return a * (TwoStep._u(xt, big_t, s) + sigma) / sigma.abs()

    @staticmethod
    def _external_scale(big_t, s, a):
        ends = big_t.new_tensor([-1.0, 1.0])
        return TwoStep._u(ends, big_t, s).abs().max() / (1 - a)  # batch-independent max|u|

    @staticmethod
    def _external(xt, big_t, s, a):
        return TwoStep._u(xt, big_t, s) / TwoStep._external_scale(big_t, s, a) + torch.sign(big_t) * a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and x.dtype == self.t0.dtype:
            return self._fused(x)
        params = (self.a0, self.a1, self.t0, self.t1, self.scales)
        if _TwoStepTraining.applies(x, params):
            return _TwoStepTraining.apply(x, *params)
        return _train_graph(x, *params)

    def _piece_constants(self) -> dict[str, torch.Tensor]:
        """Per-piece scalars, stacked as ``[negative side, positive side]`` (or 4 pieces for s)."""
        return _piece_constants(self.a0, self.a1, self.t0, self.t1, self.scales)

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


@torch.no_grad()
def _piece_constants(a0: torch.Tensor, a1: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor,
                     scales: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-piece scalars, stacked as ``[negative side, positive side]`` (or 4 pieces for s)."""
    big_t = torch.stack([2 * t0 - 1, 2 * t1 - 1])
    a = torch.stack([a0, a1])
    s = scales
    sigma = torch.stack([TwoStep._sigma(big_t[0], s[1]), TwoStep._sigma(big_t[1], s[2])])
    scale = torch.stack([TwoStep._external_scale(big_t[0], s[0], a[0]),
                         TwoStep._external_scale(big_t[1], s[3], a[1])])
    return {"T": big_t, "a": a, "sigma": sigma, "sigma_abs": sigma.abs(), "D": scale,
            "level": torch.sign(big_t) * a, "s": s}


def _train_graph(x: torch.Tensor, a0: torch.Tensor, a1: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor,
                 scales: torch.Tensor) -> torch.Tensor:
    """TwoStep's train-mode forward as an autograd graph: all four pieces on every pixel."""
    xt = 2 * x - 1
    big_t0, big_t1 = 2 * t0 - 1, 2 * t1 - 1
    s0, s1, s2, s3 = scales.unbind()
    # Piece selection by lerp with exact 0/1 weights instead of torch.where: same values and
    # the same gradients (g * 1, g * 0), but where and its backward run ~5x slower on CPU.
    with torch.no_grad():
        neg, below_t0, below_t1 = (_is_negative(v) for v in (xt, xt - big_t0, xt - big_t1))
    # Pieces built in a fixed order: it sets autograd's order of adding the parameters'
    # per-piece gradients, so reordering them changes the trained weights' last bits.
    ext0 = TwoStep._external(xt, big_t0, s0, a0)
    int0 = TwoStep._internal(xt, big_t0, s1, a0)
    negative_side = torch.lerp(int0, ext0, below_t0)
    int1 = TwoStep._internal(xt, big_t1, s2, a1)
    ext1 = TwoStep._external(xt, big_t1, s3, a1)
    positive_side = torch.lerp(ext1, int1, below_t1)
    return torch.lerp(positive_side, negative_side, neg)


def _is_negative(v: torch.Tensor) -> torch.Tensor:
    """``1.0`` where ``v < 0``, else ``0.0`` (NaN stays NaN), exactly: ceil(clamp(-v, 0, 1))."""
    return v.neg().clamp_(0, 1).ceil_()


def _pick(neg: torch.Tensor, pos: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
    """``pair[0]`` on the negative side, ``pair[1]`` on the positive side, per pixel.

    ``neg``/``pos`` are exact 0/1 floats, so one product is exactly 0 and the other exactly the
    constant: the sum is exact. (``torch.where`` gives the same bits but runs ~5x slower here.)
    """
    return torch.addcmul(neg * pair[0], pos, pair[1])


def _own_piece(x: torch.Tensor, c: dict[str, torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """TwoStep's values, each pixel through its own piece only (the train graph's bits), and the
    tensors :class:`_TwoStepInference` needs for the input gradient."""
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
    return torch.lerp(y_external, y_internal, internal), (internal, d, q, a, sigma_abs, scale)  # exact lerp: 0/1


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
        y, saved = _own_piece(x, c)
        ctx.save_for_backward(*saved)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):
        internal, d, q, a, sigma_abs, scale = ctx.saved_tensors
        g_u = torch.lerp(g / scale, g / sigma_abs * a, internal)
        g_d = g_u / q + (-g_u * ((d / q) / q)) * d.sgn()
        return g_d * 2, None


class _TwoStepTraining(torch.autograd.Function):
    """TwoStep in training: each pixel's own piece only, the parameters' gradients by hand.

    The train graph (:func:`_train_graph`) runs all four pieces on every pixel, about 30 ops
    forward and 60 backward over the whole batch, and most of its backward is zeros for the
    pieces a pixel does not pick. Here the forward is :func:`_own_piece` (the same values) and
    the backward keeps autograd's arithmetic exactly, so the parameters' gradients are
    bit-identical:

    - a C loop (``pellucid_twostep_terms``) writes, for every pixel, the terms that autograd sums
      into each scalar: for each of the four pieces, the gradient reaching its threshold
      (``-g_d``), its slope (``g_q``), and its level, ``D``, ``sigma``, ``|sigma|`` or ``a`` terms,
      each from the same chain of ``div`` / ``abs`` / ``mul`` backward formulas as autograd.
      Pixels of other pieces hold 0 there (autograd's +-0, which leave a sum unchanged);
    - each term is summed over the whole batch tensor by torch, as autograd reduces a
      broadcast scalar's gradient;
    - the scalar part (``sigma``, the external scale ``D`` over the two input ends, the levels)
      is differentiated by :func:`_side_gradients` with the formulas autograd uses, and each
      parameter's contributions are added in the order autograd's engine adds them (its nodes
      run by decreasing sequence number; the order is listed there).

    It applies to CPU float32/float64 inputs without gradient, with finite values and
    parameters, where the C kernels are available (:meth:`applies`); elsewhere the train graph
    runs. A non-finite incoming gradient (where autograd's ``0 * inf`` terms of unpicked pieces
    matter) is handled by differentiating the train graph itself.
    """

    @staticmethod
    def applies(x: torch.Tensor, params: tuple[torch.Tensor, ...]) -> bool:
        from pellucid.nn.semantic import _cpu_kernels

        return (not x.requires_grad and x.numel() > 0 and x.device.type == "cpu"
                and _cpu_kernels.usable(*params) and x.dtype == params[0].dtype
                and _cpu_kernels.library() is not None)

    @staticmethod
    def forward(ctx, x, a0, a1, t0, t1, scales):
        from pellucid.nn.semantic import _cpu_kernels

        x = x.contiguous()
        s0, s1, s2, s3 = scales.unbind()
        sides = _side_scalars(t0, s0, s1, a0), _side_scalars(t1, s3, s2, a1)
        constants = torch.stack([side[k] for side in sides for k in _C_ORDER])
        y = (_cpu_kernels.twostep_forward(x, constants, _cpu_kernels.library())
             if bool(torch.isfinite(constants).all()) else None)
        ctx.graph = y is None  # a non-finite input or parameter: the train graph itself, both ways
        if ctx.graph:
            y = _train_graph(x, a0, a1, t0, t1, scales)
        ctx.sides, ctx.constants = sides, constants
        ctx.save_for_backward(x, a0, a1, t0, t1, scales)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):
        from pellucid.nn.semantic import _cpu_kernels

        x, a0, a1, t0, t1, scales = ctx.saved_tensors
        params = (a0, a1, t0, t1, scales)
        terms = None if ctx.graph else _cpu_kernels.twostep_terms(x, g.contiguous(), ctx.constants,
                                                                  _cpu_kernels.library(), out=_terms_buffer(x))
        if terms is None:  # a non-finite input, parameter or incoming gradient: the train graph's own
            with torch.enable_grad():
                leaves = [p.detach().requires_grad_(True) for p in params]
                grads = torch.autograd.grad(_train_graph(x, *leaves), leaves, g, allow_unused=True)
            return (None, *grads)
        sums = [row.sum() for row in terms]  # what autograd reduces: a broadcast scalar's gradient
        negative, positive = ctx.sides
        g_t0, g_a0, g_s0, g_s1 = _side_gradients(negative, sums[:9], negative_side=True)
        g_t1, g_a1, g_s3, g_s2 = _side_gradients(positive, sums[9:], negative_side=False)
        return None, g_a0, g_a1, g_t0, g_t1, torch.stack([g_s0, g_s1, g_s2, g_s3])


# Scratch for the 18 rows of terms, one per thread: a fresh 11 MB tensor per step (a 200-image
# batch) is paid for in page faults when first written, 0.6 ms of the backward's 1.2 ms.
_SCRATCH = threading.local()
_SCRATCH_MAX_BYTES = 64 << 20  # larger batches allocate their own


def _terms_buffer(x: torch.Tensor) -> torch.Tensor:
    shape = (18, *x.shape)
    numel = 18 * x.numel()
    buf = getattr(_SCRATCH, "buf", None)
    if buf is not None and buf.dtype == x.dtype and buf.numel() >= numel:
        return buf[:numel].view(shape)
    out = x.new_empty(shape)
    if numel * out.element_size() <= _SCRATCH_MAX_BYTES:
        _SCRATCH.buf = out.view(-1)
    return out


# the order of one side's constants for the C loop
_C_ORDER = ("T", "s_external", "s_internal", "a", "D", "sigma", "sigma_abs", "level")


def _side_scalars(t: torch.Tensor, s_external: torch.Tensor, s_internal: torch.Tensor, a: torch.Tensor
                  ) -> dict[str, torch.Tensor]:
    """One side's scalar intermediates, by the train graph's own operations (the same values)."""
    big_t = 2 * t - 1
    ends = big_t.new_tensor([-1.0, 1.0])
    d_e = ends - big_t
    q_e = s_external + d_e.abs()
    u_e = d_e / q_e
    abs_u_e = u_e.abs()
    m = abs_u_e.max()
    r = 1 - a
    den = s_internal + big_t.abs()
    sigma = big_t / den
    return {"T": big_t, "s_external": s_external, "s_internal": s_internal, "a": a, "D": m / r,
            "level": torch.sign(big_t) * a, "sigma": sigma, "sigma_abs": sigma.abs(), "d_e": d_e, "q_e": q_e,
            "u_e": u_e, "abs_u_e": abs_u_e, "m": m, "r": r, "den": den}


def _side_gradients(c: dict[str, torch.Tensor], sums: list[torch.Tensor], negative_side: bool
                    ) -> tuple[torch.Tensor, ...]:
    """Gradients of one side's ``t``, ``a``, external ``s`` and internal ``s`` from the summed
    terms (``sums``: external T, s, D, level; internal T, s, |sigma|, a, sigma), by autograd's
    formulas for each scalar node (div: ``g / o`` and ``-g * ((x / o) / o)``; abs: ``g * sgn``;
    max: ``g / count`` to each maximum; rsub: ``-g``; sign: 0)."""
    ext_t, ext_s, ext_d, ext_level, int_t, int_s, int_sigma_abs, int_a, int_sigma = sums
    big_t = c["T"]
    # internal piece: sigma = T / (s + |T|), used as |sigma| and in u + sigma
    g_sigma = int_sigma_abs * c["sigma"].sgn() + int_sigma
    g_t_sigma = g_sigma / c["den"]
    g_den = -g_sigma * ((big_t / c["den"]) / c["den"])
    g_t_den = g_den * big_t.sgn()
    # external piece: D = max_e |u(e)| / (1 - a) over the input ends e = -1, 1
    g_m = ext_d / c["r"]
    g_a_r = -(-ext_d * ((c["m"] / c["r"]) / c["r"]))
    hit = c["abs_u_e"] == c["m"]
    g_u_e = torch.zeros_like(c["u_e"]).masked_fill_(hit, g_m / hit.sum()) * c["u_e"].sgn()
    g_q_e = -g_u_e * ((c["d_e"] / c["q_e"]) / c["q_e"])
    g_s_ends = g_q_e.sum()
    g_t_ends = (-(g_u_e / c["q_e"] + g_q_e * c["d_e"].sgn())).sum()
    g_a_level = ext_level * torch.sign(big_t)  # level = sign(T) a; sign's own gradient is 0
    zero = torch.zeros_like(big_t)
    # each scalar's contributions in the order autograd's engine adds them
    if negative_side:  # nodes: internal piece (built after the external one) first
        g_t = ((((int_t + g_t_sigma) + g_t_den) + zero) + g_t_ends) + ext_t
        g_a = (int_a + g_a_level) + g_a_r
    else:  # external piece (built after the internal one) first
        g_t = ((((zero + g_t_ends) + ext_t) + int_t) + g_t_sigma) + g_t_den
        g_a = (g_a_level + g_a_r) + int_a
    return g_t * 2, g_a, g_s_ends + ext_s, int_s + g_den
