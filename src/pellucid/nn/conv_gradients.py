r"""Input gradients of few-channel convolutions on the CPU, through ATen's direct kernel.

An attack spends most of its time on :math:`\nabla_x L` of the model. For an ``nn.Conv2d`` with
one to three input channels (the first layer of every MNIST, Fashion-MNIST or RGB network),
PyTorch's CPU backward computes :math:`\partial L / \partial x` with oneDNN (mkldnn), whose
backward-data kernel is slow for so few channels: ATen's direct kernel below took a sixth to a
half of its time for 1-3 input channels, and was slower from 6 channels on
(``python -m benchmarks conv_input_gradient`` measures both, layer by layer and over whole
attacks; ``docs/robust.md`` has the figures).

Inside :func:`direct_conv_input_gradients` such layers keep their forward (the same call, the
same bits) and compute the input gradient with ATen's direct convolution backward
(``aten._slow_conv2d_backward``: columns :math:`W^\top g`, then col2im), the kernel PyTorch
itself runs when oneDNN is switched off; it agrees with oneDNN's up to float rounding (a few
units in the last place of the gradient's largest entries). Weight and bias gradients, when
something asks for them, still come from PyTorch's own convolution backward. Layers with more
than three input channels, groups, dilation or another padding mode, and any tensor not on the
CPU or not float32/float64, are left alone.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["MAX_DIRECT_IN_CHANNELS", "direct_conv_input_gradients", "uses_direct_input_gradient"]

# At 1-3 input channels the direct kernel was 1.5-12x faster than oneDNN's backward-data; at 4
# about even, at 6 and more 2x slower (table in the module docstring).
MAX_DIRECT_IN_CHANNELS = 3


def uses_direct_input_gradient(module: nn.Module) -> bool:
    """Whether :func:`direct_conv_input_gradients` reroutes ``module``'s input gradient: a plain
    ``nn.Conv2d`` (its own forward, not a subclass's) with at most
    :data:`MAX_DIRECT_IN_CHANNELS` input channels, no groups, no dilation, zero padding."""
    return (isinstance(module, nn.Conv2d)
            and type(module).forward is nn.Conv2d.forward
            and type(module)._conv_forward is nn.Conv2d._conv_forward
            and module.in_channels <= MAX_DIRECT_IN_CHANNELS and module.groups == 1
            and tuple(module.dilation) == (1, 1) and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


class _DirectInputGradient(torch.autograd.Function):
    """Passes the convolution's output through; its backward is the direct kernel's (see module doc)."""

    @staticmethod
    def forward(ctx, x, weight, bias, output, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        return output.detach()  # computed by the layer's own forward: the same bits

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad, grad_x, grad_w, grad_b = grad.contiguous(), None, None, None
        if need_x:
            grad_x = torch.ops.aten._slow_conv2d_backward(
                grad, x.contiguous(), weight.contiguous(), tuple(weight.shape[2:]), ctx.stride,
                ctx.padding, (True, False, False))[0]
        if need_w or (need_b and ctx.has_bias):
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad, x, weight, [weight.shape[0]] if ctx.has_bias else None, ctx.stride,
                ctx.padding, (1, 1), False, (0, 0), 1, (False, need_w, need_b and ctx.has_bias))
        return grad_x, grad_w, grad_b, None, None, None


def _reroute(module: nn.Conv2d, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
    """Forward hook: wrap the output when an input gradient will be asked for (see module doc)."""
    x = args[0] if args else None
    if (not torch.is_grad_enabled() or not isinstance(x, torch.Tensor) or not x.requires_grad
            or x.dim() != 4 or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64)
            or output.dtype != x.dtype):
        return None
    return _DirectInputGradient.apply(x, module.weight, module.bias, output, tuple(module.stride),
                                      tuple(module.padding))


@contextlib.contextmanager
def direct_conv_input_gradients(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, the few-channel ``nn.Conv2d`` layers of ``model``
    (:func:`uses_direct_input_gradient`) compute input gradients on the CPU with ATen's direct
    kernel (module docstring); forward outputs are unchanged. Implemented with forward hooks
    that are removed on exit, even on errors; nested or concurrent blocks on one model each add
    and remove their own. Double backward (``create_graph=True``) through a rerouted layer is
    not supported."""
    handles = [m.register_forward_hook(_reroute) for m in model.modules() if uses_direct_input_gradient(m)]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()
