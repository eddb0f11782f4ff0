"""Fused kernels for semantic-feature layers."""

from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F

from pellucid.nn.semantic import _cpu_kernels

# Images per block. The (block, K, H, W) score tensor must stay in cache: on a 2-core machine
# conv2d + max over 200 MNIST images at once runs 3.7x slower than in blocks of 8, because
# the 40 MB of scores spill to memory. Blocks are a cache tiling, not a per-sample loop. The
# backward's per-tap buffers are (taps, block, H, W): 128 images keep them at ~10 MB (at attack
# batches of 1024 an unblocked backward ran 1.5x slower).
_FORWARD_BLOCK = 8
_BACKWARD_BLOCK = 128


def _max_with_first_index(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``scores.max(dim=1)``: the max over channels and the first channel that attains it.

    The same values and indices, ties included, about 1.4x faster on CPU for (8, 64, 28, 28):
    the max with indices is the slowest op of the conv layer, while ``amax`` and float
    elementwise ops are vectorised (comparisons that produce ``bool`` are not). With
    ``d = scores - best`` (exactly +-0 where a channel attains the max, negative elsewhere),
    ``(sign(d) + 1) * (K - k)`` is ``K - k`` at the winners and 0 elsewhere, so its max over ``k``
    is ``K`` minus the first winner. Ranks are exact integers in float32 / float64.
    """
    k = scores.shape[1]
    if scores.dtype not in (torch.float32, torch.float64) or k > 2 ** 24:
        return scores.max(dim=1)
    best = scores.amax(dim=1, keepdim=True)
    rank = torch.arange(k, 0, -1, dtype=scores.dtype, device=scores.device).view(1, k, 1, 1)
    first = torch.sub(scores, best).sign_().add_(1).mul_(rank).amax(dim=1)
    # a NaN score has no winner (first = 0 or NaN); clamp keeps the index in range, and the
    # NaN best score says what happened
    return best.squeeze(1), (k - first).long().clamp_(0, k - 1)


# (K, kh, kw, H, W, threads, oneDNN on) -> whether the fused C forward gives this process's conv2d + max bits
_FUSED_AGREES: dict[tuple[int, ...], bool] = {}
_FUSED_LOCK = threading.Lock()


def _fused_forward(x: torch.Tensor, weight: torch.Tensor, lib) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The fused C forward's ``(best, idx)``, or ``None`` where it does not apply.

    It applies to contiguous float32 CPU tensors with one input channel, in a build with AVX2
    and FMA, and only where a probe has shown it to give this process's own ``conv2d`` + max bits
    for that kernel and image shape (see :func:`_fused_forward_agrees`). On 2 cores it runs
    the white-box network's conv forward about 2x faster than ``conv2d`` + max (7.5-8.3 ms
    against 15.8-20 ms per 200 images; ``benchmarks/whitebox_speed.py`` times whole steps),
    because the ``K`` score maps are never written and read back.
    """
    if (lib is None or x.dtype != torch.float32 or x.shape[0] == 0 or x.shape[1] != 1
            or weight.shape[1] != 1 or weight.shape[2] != weight.shape[3] or weight.shape[3] % 2 != 1
            or not x.is_contiguous() or not weight.is_contiguous()
            or not _cpu_kernels.fused_forward_built(lib)):
        return None
    # conv2d's own algorithm may change with the thread count or with oneDNN switched off
    key = (*weight.shape[:1], *weight.shape[2:], *x.shape[2:], torch.get_num_threads(),
           torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)
    with _FUSED_LOCK:
        agrees = _FUSED_AGREES.get(key)
        if agrees is None:
            agrees = _FUSED_AGREES[key] = _fused_forward_agrees(lib, weight.shape, x.shape[2:])
    return _cpu_kernels.max_correlation_forward(x, weight, lib) if agrees else None


def _fused_forward_agrees(lib, weight_shape: torch.Size, image_shape: torch.Size) -> bool:
    """Whether the fused forward gives the bits of ``conv2d`` + max (values with their zeros'
    signs, and indices) on probe images of this shape.

    The fused loop computes each score as ``fma(w_t, x_t, acc)`` over the taps in order, from
    ``+0``: what oneDNN's AVX2 convolution does. Another build or CPU may sum otherwise, so
    this is checked once per shape and thread count, in blocks of ``_FORWARD_BLOCK`` images
    and of one (the PyTorch path's last block can be shorter), on inputs with exact zeros,
    ties and negative weights; on any difference the PyTorch path runs.
    """
    gen = torch.Generator().manual_seed(0)
    n_k, _, kh, kw = weight_shape
    h, w = image_shape
    # on the CPU explicitly: a default device set by the caller must not move the probe
    x = torch.rand(_FORWARD_BLOCK + 1, 1, h, w, generator=gen, device="cpu", dtype=torch.float32) * 2 - 1
    x[:2, :, : max(1, h // 3)] = 0.0  # zero patches: scores of +-0
    weight = torch.randn(n_k, 1, kh, kw, generator=gen, device="cpu", dtype=torch.float32)
    weight[-1] = weight[0]  # a tie at every pixel: the first kernel must win
    fused = _cpu_kernels.max_correlation_forward(x, weight, lib)
    if fused is None:
        return False
    for rows in (slice(0, _FORWARD_BLOCK), slice(_FORWARD_BLOCK, None)):
        best, idx = _max_with_first_index(F.conv2d(x[rows], weight, padding=kw // 2))
        got = fused[0][rows, 0]
        if not (torch.equal(got, best) and torch.equal(torch.signbit(got), torch.signbit(best))
                and torch.equal(fused[1][rows], idx)):
            return False
    return True


class _MaxCorrelation(torch.autograd.Function):
    """``y[b, i] = max_k <patch_i(x_b), w_k>`` and its argmax ``k``, with a sparse backward.

    Only the winning kernel of each pixel receives gradient, so the backward costs one
    ``k x k`` product per pixel instead of a dense transposed convolution over all ``K`` kernels.
    On CPU the forward is one fused C loop where it gives ``conv2d`` + max's bits
    (:func:`_fused_forward`), else ``conv2d`` in cache-sized blocks of images and a max.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor):
        b, _, h, w = x.shape
        pad = weight.shape[-1] // 2
        lib = _cpu_kernels.library() if _cpu_kernels.usable(x, weight) else None
        fused = _fused_forward(x, weight, lib)
        if fused is not None:
            ctx.save_for_backward(x, weight, fused[1])
            ctx.mark_non_differentiable(fused[1])
            return fused
        best = x.new_empty(b, 1, h, w)
        idx = torch.empty(b, h, w, dtype=torch.long, device=x.device)
        for start in range(0, b, _FORWARD_BLOCK):
            rows = slice(start, start + _FORWARD_BLOCK)
            scores = F.conv2d(x[rows], weight, padding=pad)  # (block, K, H, W)
            if lib is not None and scores.is_contiguous():
                _cpu_kernels.max_first(scores, best[rows, 0], idx[rows], lib)
            else:
                best[rows, 0], idx[rows] = _max_with_first_index(scores)
        ctx.save_for_backward(x, weight, idx)
        ctx.mark_non_differentiable(idx)
        return best, idx

    @staticmethod
    def backward(ctx, grad_best: torch.Tensor, _grad_idx):
        x, weight, idx = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[:2]
        g = grad_best[:, 0].contiguous()
        x, weight = x.contiguous(), weight.contiguous()
        # the C loops skip products that add a signed zero; with a non-finite input or kernel such a
        # product may be NaN instead, so those (never met in training) take the PyTorch path
        lib = (_cpu_kernels.library() if _cpu_kernels.usable(x, weight, g) and bool(torch.isfinite(x).all())
               and bool(torch.isfinite(weight).all()) else None)
        if lib is not None:
            grad_x, grad_w = _cpu_kernels.max_correlation_backward(x, weight, idx, g, need_x, need_w, lib)
            return grad_x, (grad_w.t().contiguous().view(weight.shape) if need_w else None)
        grad_x = torch.empty_like(x) if need_x else None
        grad_w = weight.new_zeros(weight[0].numel(), weight.shape[0]) if need_w else None
        workspace = _Workspace()
        for start in range(0, x.shape[0], _BACKWARD_BLOCK):
            rows = slice(start, start + _BACKWARD_BLOCK)
            gx = _max_correlation_backward_block(x[rows], weight, idx[rows], grad_best[rows, 0],
                                                 grad_w, workspace)
            if need_x:
                grad_x[rows] = gx
        return grad_x, (grad_w.t().contiguous().view(weight.shape) if need_w else None)


class _Workspace:
    """Scratch buffers reused by the blocks of one backward call.

    A fresh 10 MB tensor per block and per buffer comes from ``mmap`` and is paid for in page
    faults when first written, which made a 128-image gather take 1.2 ms at best and 5.7 ms
    in one call of ten.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        numel = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._buffers[name] = like.new_empty(numel)
        return buf[:numel].view(shape)


def _max_correlation_backward_block(x: torch.Tensor, weight: torch.Tensor, idx: torch.Tensor,
                                    g: torch.Tensor, grad_w: torch.Tensor | None,
                                    workspace: _Workspace | None = None) -> torch.Tensor:
    """Input gradient of one block, accumulating the kernel gradient into ``grad_w`` (taps, K).

    The loops run over the ``c*kh*kw`` kernel taps (25 for 5x5), never over images or pixels: each
    tap is one whole-block tensor op. On CPU this is 2-3x faster than F.fold / F.unfold (col2im /
    im2col), because nothing (B, HW, taps)-sized is ever transposed.
    """
    n_k, c, kh, kw = weight.shape
    b, _, h, w = x.shape
    ph, pw = kh // 2, kw // 2
    taps = [(c_, dy, dx) for c_ in range(c) for dy in range(kh) for dx in range(kw)]
    workspace = workspace or _Workspace()
    if grad_w is not None:  # dw_k[tap] += sum over pixels p that kernel k won of g[p] x[p + tap]
        xp = F.pad(x, (pw, pw, ph, ph))
        weighted = workspace.get("weighted", (len(taps), b, h, w), x)
        # every tap's shifted window at once, as a strided view (c, kh, kw, b, H, W): one op
        windows = xp.unfold(2, kh, 1).unfold(3, kw, 1).permute(1, 4, 5, 0, 2, 3)
        torch.mul(windows, g, out=weighted.view(c, kh, kw, b, h, w))
        grad_w.index_add_(1, idx.reshape(-1), weighted.view(len(taps), -1))
    # dx[p] = sum_taps g[p - tap] w_{k(p - tap)}[tap]: the winning kernel, spread back over its patch
    # (taps, K), contiguous: gathering from contiguous rows is 1.6x faster than from the transpose
    w_taps = weight.reshape(n_k, -1).t().contiguous()
    flat = idx.reshape(1, -1).expand(len(taps), -1)
    winner = torch.gather(w_taps, 1, flat, out=workspace.get("winner", tuple(flat.shape), x))
    # times g in place: one op and no per-tap temporaries, the same products as winner[t] * g
    spread = winner.view(len(taps), b, h, w).mul_(g)  # (taps, b, H, W)
    padded = workspace.get("padded", (b, c, h + 2 * ph, w + 2 * pw), x).zero_()
    for t, (c_, dy, dx) in enumerate(taps):
        padded[:, c_, dy:dy + h, dx:dx + w] += spread[t]
    return padded[:, :, ph:ph + h, pw:pw + w]


def correlation_scores(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """All ``K`` "same"-padded cross-correlation maps ``(B, K, H, W)`` of ``x`` with ``weight``,
    computed in the blocks of :func:`max_correlation` (so their max over ``K`` equals its values,
    bit for bit); differentiable by autograd."""
    pad = weight.shape[-1] // 2
    return torch.cat([F.conv2d(xb, weight, padding=pad) for xb in x.split(_FORWARD_BLOCK)])


def max_correlation(x: torch.Tensor, weight: torch.Tensor, return_index: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Max over kernels of the "same"-padded cross-correlation of ``x`` with each kernel.

    ``x``: ``(B, C, H, W)``; ``weight``: ``(K, C, k, k)`` with odd ``k``. Returns the best score
    ``(B, 1, H, W)`` and the winning kernel index ``(B, H, W)`` (``None`` when
    ``return_index=False``). Equals ``conv2d(x, weight, padding=k // 2).max(dim=1)`` with a
    sparse backward (first order only).
    """
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    if return_index or needs_grad:
        best, idx = _MaxCorrelation.apply(x, weight)
        return best, (idx if return_index else None)
    # Inference without poses (attacks' forward passes): amax skips the argmax bookkeeping,
    # which is half the cost of max(dim=1) on CPU. Same values, bit for bit.
    lib = _cpu_kernels.library() if _cpu_kernels.usable(x, weight) else None
    fused = _fused_forward(x, weight, lib)
    if fused is not None:
        return fused[0], None
    pad = weight.shape[-1] // 2
    return torch.cat([F.conv2d(xb, weight, padding=pad).amax(dim=1, keepdim=True)
                      for xb in x.split(_FORWARD_BLOCK)]), None
