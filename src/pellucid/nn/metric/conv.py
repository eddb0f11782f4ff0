r"""Convolutional metric neurons: a distance between every image patch and each filter centre.

``d[b, j, h, w] = ||patch_{h,w}(x_b) - c_j||_p``, then standardised over the output channels of
each patch and negated, ``y = -(d - mean_j d) / std_j d`` (the paper's conv form).

* :class:`L2DistanceConv2d` computes ``p = 2`` with convolutions only:
  ``||x - c||^2 = ||x||^2 - 2 x \cdot c + ||c||^2`` where ``||x||^2`` per patch is a convolution of
  ``x^2`` with a ones kernel and ``x \cdot c`` is an ordinary convolution. No unfolded
  ``(B, C k^2, L)`` tensor and no ``cdist``: this is what makes a metric ResNet affordable.
* :class:`MetricConv2d` turns any vector metric layer (``(B, D) -> (B, H)``, e.g.
  :class:`~pellucid.nn.metric.distance.LpDistance` with any ``p``, :class:`StereoAngle`) into its conv
  form through ``unfold`` (general, slower), except :class:`StereoAngle`, whose conv form is also
  two convolutions (:func:`stereo_angle_conv2d`).
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from pellucid.errors import InvalidInputError
from pellucid.nn.metric.distance import _NEAR_PAIR, StereoAngle, lp_distance, standardise_negated

__all__ = ["L2DistanceConv2d", "MetricConv2d", "l2_distance_conv2d", "l2_distance_unfold_cdist",
           "stereo_angle_conv2d"]


def _check_image(x: torch.Tensor, channels: int) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4 or x.shape[1] != channels:
        raise InvalidInputError(f"input must be a float tensor (B, {channels}, H, W), got "
                                f"{getattr(x, 'shape', type(x).__name__)}")


# torch.fx records the input check as one call (a trace cannot decide it), so traced copies (e.g.
# for excitation pullbacks) still check every input.
torch.fx.wrap("_check_image")


def l2_distance_conv2d(x: torch.Tensor, centres: torch.Tensor, stride=1, padding=0,
                       dilation=1) -> torch.Tensor:
    r"""``d[b, j, h, w] = ||patch_{h,w}(x_b) - c_j||_2`` via ``||x||^2 - 2 x \cdot c + ||c||^2``.

    ``x``: ``(B, C, H, W)``; ``centres``: ``(O, C, k, k)`` -> ``(B, O, H', W')``. Zero padding
    counts as part of the patch, exactly as ``unfold`` would. That form cancels when
    ``d << ||patch||`` (a patch equal to a centre lands at ``sqrt(rounding)`` instead of 0), so,
    as in :func:`~pellucid.nn.metric.distance.euclidean_distance`, the few near pairs are
    recomputed from their patch and scattered back; gradients flow through both paths.
    """
    ones = torch.ones((1, *centres.shape[1:]), dtype=x.dtype, device=x.device)  # (1, C, k, k)
    patch_sq = F.conv2d(x * x, ones, stride=stride, padding=padding, dilation=dilation)  # (B,1,H',W')
    cross = F.conv2d(x, centres, stride=stride, padding=padding, dilation=dilation)  # (B,O,H',W')
    centre_sq = centres.flatten(1).pow(2).sum(1).view(1, -1, 1, 1)  # (1,O,1,1)
    d_sq = patch_sq - 2 * cross + centre_sq
    d = d_sq.clamp_min(1e-12).sqrt()
    with torch.no_grad():  # one bound for the batch, as in euclidean_distance
        b, j, h, w = (d_sq <= _NEAR_PAIR * (patch_sq.max() + centre_sq.max())).nonzero(as_tuple=True)
    if b.numel() == 0:
        return d
    patches = F.unfold(x, centres.shape[-2:], dilation=dilation, padding=padding, stride=stride)  # (B, Ckk, L)
    near = patches[b, :, h * d.shape[-1] + w] - centres.flatten(1)[j]  # (n, Ckk)
    return d.index_put((b, j, h, w), torch.linalg.vector_norm(near, dim=1))


torch.fx.wrap("l2_distance_conv2d")  # one call in traced copies: it reads the centres' shape


def l2_distance_unfold_cdist(x: torch.Tensor, centres: torch.Tensor, stride=1, padding=0,
                             dilation=1) -> torch.Tensor:
    """Reference implementation of :func:`l2_distance_conv2d` with ``unfold`` + ``cdist`` (slow)."""
    k = centres.shape[-2:]
    b, _, h, w = x.shape
    patches = F.unfold(x, k, dilation=dilation, padding=padding, stride=stride)  # (B, C*k*k, L)
    d = torch.cdist(patches.transpose(1, 2), centres.flatten(1)[None].expand(b, -1, -1))  # (B,L,O)
    s, p, dl = _pair(stride), _pair(padding), _pair(dilation)
    ho = (h + 2 * p[0] - dl[0] * (k[0] - 1) - 1) // s[0] + 1
    wo = (w + 2 * p[1] - dl[1] * (k[1] - 1) - 1) // s[1] + 1
    return d.transpose(1, 2).reshape(b, -1, ho, wo)  # (B, O, H', W')


class L2DistanceConv2d(nn.Module):
    """Euclidean metric convolution: ``y = -(d - mean_j d) / std_j d`` over the ``out_channels``
    of each patch (``standardise=True``, the paper's form) or the raw distance ``d``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, standardise: bool = True) -> None:
        super().__init__()
        if standardise and out_channels < 2:
            raise InvalidInputError("standardising over output channels needs out_channels >= 2")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.padding, self.standardise = stride, padding, standardise
        k = _pair(kernel_size)
        fan_in = in_channels * k[0] * k[1]
        self.centres = nn.Parameter(torch.randn(out_channels, in_channels, *k) / fan_in ** 0.5)

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        _check_image(x, self.in_channels)
        return l2_distance_conv2d(x, self.centres, self.stride, self.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.distances(x)
        return standardise_negated(d, dim=1) if self.standardise else d

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={tuple(self.centres.shape[-2:])}, "
                f"stride={self.stride}, padding={self.padding}, standardise={self.standardise}")


class MetricConv2d(nn.Module):
    """Conv form of any vector metric layer ``metric: (B*L, C*k*k) -> (B*L, O)`` via ``unfold``."""

    def __init__(self, metric: nn.Module, in_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0) -> None:
        super().__init__()
        k = _pair(kernel_size)
        if getattr(metric, "in_features", in_channels * k[0] * k[1]) != in_channels * k[0] * k[1]:
            raise InvalidInputError(f"metric takes {metric.in_features} features but a patch has "
                                    f"{in_channels * k[0] * k[1]} (= in_channels * k * k)")
        self.metric, self.in_channels, self.kernel_size = metric, in_channels, k
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image(x, self.in_channels)
        if isinstance(self.metric, StereoAngle):  # same values, ~10x faster than unfold (see below)
            return stereo_angle_conv2d(x, self.metric, self.kernel_size, self.stride, self.padding)
        b, _, h, w = x.shape
        patches = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)  # (B,Ck²,L)
        n_patches = patches.shape[-1]
        y = self.metric(patches.transpose(1, 2).reshape(b * n_patches, -1))  # (B*L, O)
        ho = (h + 2 * self.padding - self.kernel_size[0]) // self.stride + 1
        wo = (w + 2 * self.padding - self.kernel_size[1]) // self.stride + 1
        return y.view(b, n_patches, -1).transpose(1, 2).reshape(b, -1, ho, wo)  # (B, O, H', W')


def stereo_angle_conv2d(x: torch.Tensor, layer: StereoAngle, kernel_size, stride=1,
                        padding=0) -> torch.Tensor:
    r""":class:`StereoAngle` on every patch, with two convolutions and no unfolded tensor.

    With ``x' = patch e^t`` and ``s = ||x'||^2``, ``S^{-1}(x') = [2x' / (s + 1), (s - 1) / (s + 1)]``,
    so ``y_j = (2 e^t \hat w_{j,1:D} \cdot patch + \hat w_{j,D+1} (s - 1)) / (s + 1) + b_j``:
    ``\hat w_{j,1:D} \cdot patch`` is a convolution and ``s = e^{2t}`` times the convolution of
    ``x^2`` with a ones kernel. Zero padding counts as part of the patch, as with ``unfold``.
    ``x``: ``(B, C, H, W)`` -> ``(B, O, H', W')``.
    """
    k = _pair(kernel_size)
    unit = layer.unit_weight()  # (O, C k k + 1)
    out, channels = unit.shape[0], layer.in_features // (k[0] * k[1])  # ints: traceable by torch.fx
    scale = layer.log_input_scale.exp()
    ones = torch.ones_like(unit[:1, :-1]).reshape(1, channels, *k)
    sq = scale.pow(2) * F.conv2d(x * x, ones, stride=stride, padding=padding)  # (B, 1, H', W')
    cross = scale * F.conv2d(x, unit[:, :-1].reshape(out, channels, *k), stride=stride, padding=padding)
    y = (2 * cross + unit[:, -1].view(1, -1, 1, 1) * (sq - 1)) / (sq + 1)
    return y if layer.bias is None else y + layer.bias.view(1, -1, 1, 1)


def lp_distance_conv2d(x: torch.Tensor, centres: torch.Tensor, p: float, stride=1, padding=0) -> torch.Tensor:
    """Any-``p`` patch distance via ``unfold`` + :func:`lp_distance` (``p = 2``: use the conv path)."""
    if p == 2:
        return l2_distance_conv2d(x, centres, stride, padding)
    b, _, h, w = x.shape
    k = centres.shape[-2:]
    patches = F.unfold(x, k, padding=padding, stride=stride).transpose(1, 2)  # (B, L, Ck²)
    d = lp_distance(patches.reshape(-1, patches.shape[-1]), centres.flatten(1), p)  # (B*L, O)
    ho = (h + 2 * padding - k[0]) // stride + 1
    wo = (w + 2 * padding - k[1]) // stride + 1
    return d.view(b, -1, d.shape[-1]).transpose(1, 2).reshape(b, -1, ho, wo)
