"""Surrogate gates against analytic formulas, Zennit, and autograd references (float64, several seeds)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pellucid.errors import InvalidInputError, UnknownNameError
from pellucid.explain import ExcitationPullback, ExcitationReLU, Gradient, PoolGeometry
from pellucid.explain.gates import ExcitationMaxPool2d, soft_max_pool2d_vjp
from pullback_reference import _soft_pool


def _mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 3)).double()


@pytest.mark.parametrize("gate,formula", [
    ("sigmoid", lambda u: 1 / (1 + torch.exp(-u))),
    ("normal_cdf", lambda u: 0.5 * (1 + torch.erf(u / math.sqrt(2)))),
])
@pytest.mark.parametrize("tau", [0.05, 0.3, 2.0])
def test_relu_gate_matches_formula(gate, formula, tau):
    z = torch.linspace(-4, 4, 401, dtype=torch.float64, requires_grad=True)
    y = ExcitationReLU(gate, tau)(z)
    assert torch.equal(y, torch.relu(z))  # forward exact
    upstream = torch.randn(401, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad(y, z, upstream)
    torch.testing.assert_close(grad, upstream * formula(z.detach() / tau), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigmoid_gate_equals_analytic_chain_rule_on_mlp(seed):
    """d f_t / dx for f = W3 r(W2 r(W1 x + b1) + b2) + b3 with r' := sigmoid(z / tau), by hand."""
    model, tau = _mlp(seed), 0.3
    x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    l1, l2, l3 = model[0], model[2], model[4]
    z1 = x @ l1.weight.T + l1.bias
    z2 = torch.relu(z1) @ l2.weight.T + l2.bias
    # row b: W3[t] diag(s(z2_b)) W2 diag(s(z1_b)) W1
    g2 = l3.weight[1] * torch.sigmoid(z2 / tau)  # (B, 16)
    g1 = (g2 @ l2.weight) * torch.sigmoid(z1 / tau)  # (B, 16)
    want = g1 @ l1.weight  # (B, 6)
    got = ExcitationPullback(model, temperature=tau).attribute(x, target=1)
    torch.testing.assert_close(got, want.detach(), rtol=1e-10, atol=1e-12)


def test_sigmoid_gate_equals_zennit_beta_smooth():
    zennit = pytest.importorskip("zennit.composites")
    model, tau = _mlp(3), 0.3
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    leaf = x.clone().requires_grad_(True)
    with zennit.BetaSmooth(beta_smooth=1 / tau).context(model) as modified:
        (want,) = torch.autograd.grad(modified(leaf)[:, 2].sum(), leaf)
    got = ExcitationPullback(model, temperature=tau).attribute(x, target=2)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(got, Gradient(model).attribute(x, target=2))


GEOMETRIES = [
    dict(kernel_size=3, stride=2, padding=1),  # ResNet stem
    dict(kernel_size=3, stride=1, padding=1),  # GoogLeNet / Inception branches
    dict(kernel_size=3, stride=2, padding=0, ceil_mode=True),  # GoogLeNet
    dict(kernel_size=2, stride=2),  # VGG
    dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 0), dilation=(2, 1)),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
]


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("detach", [False, True])
def test_soft_max_pool_backward_matches_autograd_reference(geometry, detach):
    tau = 0.3
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    g = PoolGeometry.of(**geometry)
    pool = ExcitationMaxPool2d(g, tau, detach)
    leaf = x.clone().requires_grad_(True)
    y = pool(leaf)
    hard = F.max_pool2d(x, **geometry)
    assert torch.equal(y, hard)  # forward exact
    upstream = torch.randn_like(hard)
    (got,) = torch.autograd.grad(y, leaf, upstream)
    # reference: autograd through sum_k softmax_k(x / tau) x_k (Tensor.unfold windows)
    leaf2 = x.clone().requires_grad_(True)
    soft = _soft_pool(leaf2, g.kernel_size, g.stride, g.padding, g.dilation, hard.shape[-2:], tau, detach)
    (want,) = torch.autograd.grad(soft, leaf2, upstream)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_soft_max_pool_small_tau_is_hard_max_pool():
    x = torch.randn(2, 4, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    leaf = x.clone().requires_grad_(True)
    hard = F.max_pool2d(leaf, 3, 2, 1)
    upstream = torch.randn_like(hard)
    (want,) = torch.autograd.grad(hard, leaf, upstream)
    got = soft_max_pool2d_vjp(x, upstream, PoolGeometry.of(3, 2, 1), 1e-6, False)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-8)


@pytest.mark.parametrize("bad", [0, -0.3, float("nan"), float("inf"), "hot"])
def test_bad_temperature_is_a_clear_error(bad):
    with pytest.raises(InvalidInputError, match="temperature"):
        ExcitationPullback(_mlp(0), temperature=bad)


def test_unknown_gate_lists_the_known_ones():
    with pytest.raises(UnknownNameError, match="sigmoid"):
        ExcitationPullback(_mlp(0), gate="tanh")


def test_custom_gate_callable():
    model = _mlp(0)
    x = torch.randn(3, 6, dtype=torch.float64)
    hard = ExcitationPullback(model, gate=lambda u: (u > 0).to(u.dtype)).attribute(x, target=0)
    torch.testing.assert_close(hard, Gradient(model).attribute(x, target=0), rtol=0, atol=0)


def test_gradient_equals_captum_saliency():
    attr = pytest.importorskip("captum.attr")
    model = _mlp(4).eval()
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    want = attr.Saliency(model).attribute(x.clone().requires_grad_(True), target=1, abs=False)
    torch.testing.assert_close(Gradient(model).attribute(x, target=1), want, rtol=0, atol=0)
