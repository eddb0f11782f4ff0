"""Row-wise statistics and similarities of attribution maps, all batched over the first axis.

Correlations are computed in float64 (float32 on MPS) and are NaN where a row is constant.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from pellucid._registry import Registry
from pellucid.errors import InvalidInputError
from pellucid.explain._metrics._core import stat_dtype

__all__ = ["SIMILARITIES", "average_ranks", "cosine", "pearson", "spearman", "ssim", "ssim_flat"]

Similarity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SIMILARITIES: Registry[Similarity] = Registry("similarity")


def _float(t: torch.Tensor) -> torch.Tensor:
    return t.to(stat_dtype(t.device))


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``r = sum (a - mean a)(b - mean b) / sqrt(sum (a - mean a)^2 sum (b - mean b)^2)`` along the
    last axis."""
    a, b = _float(a), _float(b)
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / ((a * a).sum(-1) * (b * b).sum(-1)).sqrt()


def average_ranks(v: torch.Tensor) -> torch.Tensor:
    """1-based ranks along the last axis; tied values share the mean of their ranks.

    A value with ``lo`` smaller and ``hi - lo`` equal entries holds ranks ``lo + 1 .. hi``, whose
    mean is ``(lo + hi + 1) / 2``.
    """
    v = _float(v).contiguous()
    ordered = v.sort(dim=-1).values
    lo = torch.searchsorted(ordered, v, right=False)
    hi = torch.searchsorted(ordered, v, right=True)
    return (lo + hi + 1).to(v.dtype) / 2


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rho: the Pearson correlation of the average ranks, along the last axis."""
    return pearson(average_ranks(a), average_ranks(b))


def _flat_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape:
        raise InvalidInputError(f"cannot compare maps of shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return _float(a.flatten(1)), _float(b.flatten(1))


@SIMILARITIES.register("spearman")
def spearman_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of two maps per sample (Adebayo et al. 2018)."""
    return spearman(*_flat_pair(a, b))


@SIMILARITIES.register("pearson")
def pearson_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of two maps per sample."""
    return pearson(*_flat_pair(a, b))


@SIMILARITIES.register("cosine")
def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``<a, b> / (|a| |b|)`` per sample."""
    a, b = _flat_pair(a, b)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def _ssim_maps(a: torch.Tensor, b: torch.Tensor, data_range: torch.Tensor, win_size: int,
               k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Mean SSIM of ``a, b (N, 1, *spatial)`` (1 or 2 spatial axes) over all full windows.

    ``SSIM = (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2))`` with
    means and sample (co)variances over a uniform ``win_size`` window, ``C1 = (k1 R)^2`` and
    ``C2 = (k2 R)^2`` for the data range ``R`` (Wang et al. 2004; scikit-image's defaults).
    """
    spatial = a.shape[2:]
    if min(spatial) < win_size:
        raise InvalidInputError(f"SSIM needs maps of at least {win_size} pixels per side, got "
                                f"{tuple(spatial)}; use another similarity (e.g. 'spearman')")
    pool = F.avg_pool1d if len(spatial) == 1 else F.avg_pool2d

    def mean(t: torch.Tensor) -> torch.Tensor:
        return pool(t, win_size, stride=1)

    mu_a, mu_b = mean(a), mean(b)
    n = win_size ** len(spatial)
    unbiased = n / (n - 1)
    var_a = unbiased * (mean(a * a) - mu_a * mu_a)
    var_b = unbiased * (mean(b * b) - mu_b * mu_b)
    cov = unbiased * (mean(a * b) - mu_a * mu_b)
    r = data_range.view(-1, *[1] * (a.dim() - 1))
    c1, c2 = (k1 * r) ** 2, (k2 * r) ** 2
    s = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def _joint_range(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``R = max(a, b) - min(a, b)`` per sample, over both maps."""
    both = torch.cat([a.flatten(1), b.flatten(1)], 1)
    return both.amax(1) - both.amin(1)


@SIMILARITIES.register("ssim")
def ssim(a: torch.Tensor, b: torch.Tensor, win_size: int = 7) -> torch.Tensor:
    """Structural similarity of two image maps ``(B, C, H, W)``: 2-D SSIM of each channel over
    ``win_size``-pixel windows, averaged over windows and channels, with the data range of the pair
    (``max - min`` over both maps of a sample)."""
    if a.dim() != 4 or a.shape != b.shape:
        raise InvalidInputError(f"ssim compares image maps (B, C, H, W) of one shape, got "
                                f"{tuple(a.shape)} and {tuple(b.shape)}; use 'ssim_flat' for others")
    a, b = _float(a), _float(b)
    batch, channels = a.shape[:2]
    r = _joint_range(a, b).repeat_interleave(channels)
    maps = _ssim_maps(a.flatten(0, 1).unsqueeze(1), b.flatten(0, 1).unsqueeze(1), r, win_size)
    return maps.view(batch, channels).mean(1)


@SIMILARITIES.register("ssim_flat")
def ssim_flat(a: torch.Tensor, b: torch.Tensor, win_size: int = 7) -> torch.Tensor:
    """1-D SSIM of the flattened maps (``win_size`` consecutive elements per window): what Quantus'
    ``RandomLogit`` computes by default."""
    a, b = _flat_pair(a, b)
    return _ssim_maps(a.unsqueeze(1), b.unsqueeze(1), _joint_range(a, b), win_size)
