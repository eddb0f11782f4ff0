"""A slower, independent reference for excitation pullbacks, written for the tests only.

It intercepts every ReLU / 2-d max-pool *call* at run time (a ``TorchFunctionMode``, so module and
functional calls alike) on the unmodified model and substitutes, per call site, the "gradient
injection" form ``y = hard.detach() + soft - soft.detach()`` whose gradient autograd derives:

- ReLU:    soft = z * sigmoid(z / tau).detach()            -> dy/dz = sigmoid(z / tau)
- MaxPool: soft = sum_k softmax_k(x_k / tau) x_k (windows via ``Tensor.unfold`` on -inf padding)

It shares no code with ``pellucid.explain``.
"""

from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

RELU_CALLS = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}  # F.relu_ is torch.relu_
POOL_CALLS = {F.max_pool2d, torch.max_pool2d}


def _soft_pool(x, kernel, stride, padding, dilation, out_hw, tau, detach_weights):
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    out_h, out_w = out_hw
    h, w = x.shape[-2:]
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    bottom = max((out_h - 1) * sh + span_h - h - ph, 0)
    right = max((out_w - 1) * sw + span_w - w - pw, 0)
    xp = F.pad(x, (pw, right, ph, bottom), value=-math.inf)
    win = xp.unfold(2, span_h, sh).unfold(3, span_w, sw)[..., ::dh, ::dw]  # (B, C, oh, ow, kh, kw)
    win = win[:, :, :out_h, :out_w].flatten(-2)
    weights = torch.softmax(win / tau, dim=-1)
    if detach_weights:
        weights = weights.detach()
    finite = torch.where(torch.isinf(win), torch.zeros_like(win), win)
    return (weights * finite).sum(-1)


class ReferencePullback(TorchFunctionMode):
    """``with ReferencePullback(tau) as ref: model(x)`` computes the pullback via per-call-site injection."""

    def __init__(self, tau: float, detach_pool_weights: bool = False, pools: bool = True):
        super().__init__()
        self.tau, self.detach_pool_weights, self.pools = tau, detach_pool_weights, pools
        self.counts: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in RELU_CALLS:
            self.counts["relu"] += 1
            z = args[0]
            inplace = func in (torch.relu_, torch.Tensor.relu_) or kwargs.get("inplace", False) \
                or (func is F.relu and len(args) > 1 and args[1])
            z_in = z.clone() if inplace else z
            hard = torch.relu(z_in)
            soft = z_in * torch.sigmoid(z_in / self.tau).detach()
            y = hard.detach() + soft - soft.detach()
            return z.copy_(y) if inplace else y  # inplace calls overwrite their input
        if func in POOL_CALLS and self.pools:
            names = ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"]
            a = dict(zip(names, args))
            a.update(kwargs)
            if not a.get("return_indices", False):
                self.counts["maxpool"] += 1
                x = a["input"]

                def pair(v):
                    return (int(v), int(v)) if not isinstance(v, (list, tuple)) else (int(v[0]), int(v[-1]))

                kernel = pair(a["kernel_size"])
                stride = a.get("stride")
                stride = kernel if stride is None or stride == [] or stride == () else pair(stride)
                padding, dilation = pair(a.get("padding", 0)), pair(a.get("dilation", 1))
                hard = F.max_pool2d(x, kernel, stride, padding, dilation, a.get("ceil_mode", False))
                soft = _soft_pool(x, kernel, stride, padding, dilation, hard.shape[-2:], self.tau,
                                  self.detach_pool_weights)
                return hard.detach() + soft - soft.detach()
        return func(*args, **kwargs)


def reference_pullback(model, x, target: int, tau: float, detach_pool_weights: bool = False,
                       pools: bool = True):
    """``(d model(x)[:, target].sum() / dx, call counts)`` through the reference gates."""
    leaf = x.detach().clone().requires_grad_(True)
    with ReferencePullback(tau, detach_pool_weights, pools) as mode:
        out = model(leaf)
    (grad,) = torch.autograd.grad(out[:, target].sum(), leaf)
    return grad, mode.counts
