"""Inversion of metric neurons: exact recovery (float64) and clear errors on degenerate centres."""

import pytest
import torch

from pellucid.errors import InvalidInputError
from pellucid.nn.metric.distance import inverse_stereographic
from pellucid.nn.metric.inversion import invert_angles, invert_euclidean, stereographic


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dim", [2, 5, 30])
def test_euclidean_multilateration_with_d_plus_1_centres(seed, dim):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(dim + 1, dim, generator=gen, dtype=torch.float64)
    x = torch.randn(8, dim, generator=gen, dtype=torch.float64)
    d = torch.cdist(x, centres)
    rec = invert_euclidean(d, centres)
    assert float((rec - x).norm() / x.norm()) <= 1e-6


def test_angles_plus_reference_point():
    gen = torch.Generator().manual_seed(0)
    dim = 6
    centres = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    x = torch.randn(10, dim, generator=gen, dtype=torch.float64)
    cos = (x / x.norm(dim=1, keepdim=True)) @ (centres / centres.norm(dim=1, keepdim=True)).T
    w = torch.randn(dim, generator=gen, dtype=torch.float64)
    v1, v2 = -w, x - w
    ref_cos = (v2 @ v1) / (v2.norm(dim=1) * v1.norm())
    rec = invert_angles(cos, centres, w, ref_cos)
    assert float((rec - x).norm() / x.norm()) <= 1e-6


def test_stereo_round_trip():
    x = torch.randn(7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(stereographic(inverse_stereographic(x)), x, rtol=1e-12, atol=1e-12)


def test_degenerate_and_bad_inputs_raise():
    collinear = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]], dtype=torch.float64)
    d = torch.cdist(torch.randn(2, 2, dtype=torch.float64), collinear)
    with pytest.raises(InvalidInputError, match="degenerate"):
        invert_euclidean(d, collinear)
    centres = torch.randn(3, 3, dtype=torch.float64)  # fewer than D + 1
    with pytest.raises(InvalidInputError, match="D \\+ 1"):
        invert_euclidean(torch.rand(2, 3, dtype=torch.float64), centres)
    good = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(InvalidInputError, match="NaN"):
        invert_euclidean(torch.full((2, 4), float("nan"), dtype=torch.float64), good)
    with pytest.raises(InvalidInputError):
        invert_euclidean(torch.rand(2, 5, dtype=torch.float64), good)  # wrong column count
    with pytest.raises(InvalidInputError):
        invert_euclidean(torch.rand(4, dtype=torch.float64), good)  # wrong dims
    planar = torch.randn(4, 3, dtype=torch.float64)
    planar[:, 2] = 0
    with pytest.raises(InvalidInputError, match="degenerate"):
        invert_angles(torch.rand(2, 4, dtype=torch.float64), planar, torch.ones(3, dtype=torch.float64),
                      torch.rand(2, dtype=torch.float64))
