"""Disjunctive building blocks: limits and identities, slow references, constraints, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pellucid.errors import InvalidInputError
from pellucid.nn import (GumbelConv2d, L2Conv2d, MaxMatch, Mean, PositiveConv2d, Scale, SoftMaxPool,
                         exponential_anneal)

DTYPES = [torch.float32, torch.float64]


# -- SoftMaxPool ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_softmaxpool_tends_to_max_and_mean_and_stays_between(dtype):
    gen = torch.Generator().manual_seed(0)
    z = (3 * torch.randn(16, 3 * 7, generator=gen)).to(dtype)  # 3 groups of 7
    groups = z.view(16, 3, 7)
    lo, mean, hi = groups.amin(-1), groups.mean(-1), groups.amax(-1)
    torch.testing.assert_close(SoftMaxPool(3, temperature=1e-6)(z), hi, atol=1e-4, rtol=0)
    torch.testing.assert_close(SoftMaxPool(3, temperature=1e6)(z), mean, atol=1e-3, rtol=0)
    for tau in torch.logspace(-4, 4, 17).tolist():
        y = SoftMaxPool(3, temperature=tau)(z)
        assert y.dtype == dtype and y.shape == (16, 3)
        slack = 1e-5 * (1 + z.abs().max())
        assert (y >= lo - slack).all() and (y <= hi + slack).all(), tau
        assert (y >= mean - slack).all(), tau  # log-mean-exp >= mean (Jensen), a tighter bound


def test_softmaxpool_is_tau_log_mean_exp_with_softmax_gradient():
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(5, 2, 6, generator=gen, dtype=torch.float64).flatten(1).requires_grad_(True)
    tau = 0.7
    y = SoftMaxPool(2, temperature=tau)(z)
    g = z.detach().view(5, 2, 6)
    reference = tau * (torch.logsumexp(g / tau, -1) - math.log(6))
    torch.testing.assert_close(y.detach(), reference, atol=1e-12, rtol=0)
    weights = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    (grad,) = torch.autograd.grad((y * weights).sum(), z)
    expected = torch.softmax(g / tau, -1) * weights.unsqueeze(-1)  # dy_j/dz_i = softmax_i within G_j
    torch.testing.assert_close(grad, expected.flatten(1), atol=1e-12, rtol=0)


def test_softmaxpool_acts_on_the_last_axis_of_any_rank():
    z = torch.randn(2, 3, 8, dtype=torch.float64)
    torch.testing.assert_close(SoftMaxPool(4)(z), SoftMaxPool(4)(z.view(6, 8)).view(2, 3, 4))


# -- Mean and Scale -------------------------------------------------------------------------------

def test_mean_by_count_and_by_size_match_an_explicit_loop():
    z = torch.randn(3, 120, dtype=torch.float64)
    reference = torch.stack([z[:, 5 * j:5 * j + 5].sum(1) / 5 for j in range(24)], 1)
    torch.testing.assert_close(Mean(24)(z), reference, atol=1e-15, rtol=0)
    torch.testing.assert_close(Mean(group_size=5)(z), reference, atol=1e-15, rtol=0)
    assert Mean(1)(z).shape == (3, 1) and torch.equal(Mean(group_size=1)(z), z)


def test_scale_is_a_learnable_scalar_times_the_input():
    layer = Scale(init=2.5).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    y = layer(x)
    assert torch.equal(y, 2.5 * x)
    r = torch.randn(4, 3, dtype=torch.float64)
    (y * r).sum().backward()
    torch.testing.assert_close(layer.scale.grad, (x * r).sum())
    assert [n for n, _ in layer.named_parameters()] == ["scale"]


# -- PositiveConv2d -------------------------------------------------------------------------------

@pytest.mark.parametrize("make_opt", [lambda p: torch.optim.Adam(p, lr=0.5),
                                      lambda p: torch.optim.SGD(p, lr=50.0)], ids=["adam", "sgd"])
def test_positive_conv_weights_stay_nonnegative_under_a_loss_pushing_them_down(make_opt):
    torch.manual_seed(0)
    conv = PositiveConv2d(2, 4, 3, padding=1)
    opt = make_opt(conv.parameters())
    x = torch.rand(3, 2, 8, 8)  # x >= 0: the loss falls as the weights fall, without a bound
    start = conv.weight.detach().clone()
    for _ in range(25):
        opt.zero_grad()
        conv(x).sum().backward()
        opt.step()
        assert (conv.weight >= 0).all()
    assert conv.weight.detach().mean() < 0.1 * start.mean()  # the loss did push them down
    torch.testing.assert_close(conv(x), F.conv2d(x, F.softplus(conv.weight_raw), conv.bias, padding=1))


def test_positive_conv_initial_scale():
    torch.manual_seed(0)
    conv = PositiveConv2d(16, 64, 3, bias=False)
    w = conv.weight.detach()
    fan_in = 16 * 9
    assert (w > 0).all() and w.max() <= math.sqrt(3 / fan_in) + 1e-6
    assert abs(w.pow(2).mean().item() * fan_in - 1) < 0.1  # E[w^2] = 1 / fan_in
    y = conv(torch.randn(8, 16, 12, 12))
    assert 0.8 < y.std().item() < 1.2  # unit-variance input -> unit-variance output


# -- GumbelConv2d ---------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 2])
def test_gumbel_mask_is_exactly_k_hot_in_train_and_eval(k):
    torch.manual_seed(0)
    conv = GumbelConv2d(5, 3, 3, k=k, temperature=0.5)
    for _ in range(3):  # several noise draws
        m = conv.train().mask()
        assert set(m.detach().unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(m.detach().sum(1), torch.full((3, 3, 3), float(k)))
    m = conv.eval().mask()
    assert torch.equal(m.sum(1), torch.full((3, 3, 3), float(k)))
    # eval: the k largest logits, no noise
    chosen = conv.logits.detach().topk(k, dim=1).indices
    assert torch.equal(m.gather(1, chosen), torch.ones_like(chosen, dtype=m.dtype))
    assert torch.equal(conv.eval().mask(), m)


def test_gumbel_forward_uses_the_mask_and_the_generator_seeds_it():
    conv = GumbelConv2d(4, 6, 3, k=2, padding=1, bias=True)
    x = torch.randn(2, 4, 7, 7)
    conv.generator = torch.Generator().manual_seed(3)
    mask = conv.mask().detach()
    conv.generator = torch.Generator().manual_seed(3)
    y = conv(x)
    torch.testing.assert_close(y, F.conv2d(x, mask * conv.magnitude, conv.bias, padding=1))
    conv.generator = None  # global RNG: reproducible through torch.manual_seed
    torch.manual_seed(5)
    a = conv.mask()
    torch.manual_seed(5)
    assert torch.equal(a, conv.mask())


def test_gumbel_straight_through_gradient_is_the_soft_gumbel_softmax_gradient():
    torch.manual_seed(0)
    conv = GumbelConv2d(5, 3, 3, k=1, temperature=0.8).double()
    x = torch.randn(2, 5, 6, 6, dtype=torch.float64)
    r = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    conv.generator = torch.Generator().manual_seed(7)
    (conv(x) * r).sum().backward()
    assert conv.logits.grad.abs().sum() > 0
    # reference: the same Gumbel draw, the soft mask softmax((L + G) / tau) in place of the hard one;
    # the loss is linear in the weight, so d loss / d mask does not depend on where it is taken
    u = torch.rand(conv.logits.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    logits = conv.logits.detach().clone().requires_grad_(True)
    soft = torch.softmax((logits - torch.log(-torch.log(u))) / 0.8, dim=1)
    (F.conv2d(x, soft * conv.magnitude.detach()) * r).sum().backward()
    torch.testing.assert_close(conv.logits.grad, logits.grad)


def test_gumbel_topk_gradient_is_nonzero_and_signed_magnitudes_work():
    torch.manual_seed(0)
    conv = GumbelConv2d(6, 2, 2, k=3, positive=False)
    conv(torch.randn(3, 6, 5, 5)).pow(2).sum().backward()
    assert conv.logits.grad.abs().sum() > 0 and conv.magnitude_raw.grad.abs().sum() > 0
    assert (conv.magnitude < 0).any()  # signed variant


def test_exponential_anneal_and_set_temperature():
    assert exponential_anneal(0, 100, 2.0, 0.02) == pytest.approx(2.0)
    assert exponential_anneal(50, 100, 2.0, 0.02) == pytest.approx(0.2)  # geometric midpoint
    assert exponential_anneal(100, 100, 2.0, 0.02) == pytest.approx(0.02)
    assert exponential_anneal(500, 100, 2.0, 0.02) == pytest.approx(0.02)
    conv = GumbelConv2d(3, 2, 3)
    conv.set_temperature(exponential_anneal(10, 20, 1.0, 0.25))
    assert conv.temperature == pytest.approx(0.5)


# -- L2Conv2d -------------------------------------------------------------------------------------

@pytest.mark.parametrize("stride, padding, dilation", [(1, 0, 1), (2, 1, 1), (1, 2, 2)])
def test_l2conv_is_minus_the_patch_distance(stride, padding, dilation):
    torch.manual_seed(0)
    conv = L2Conv2d(3, 5, 3, stride=stride, padding=padding, dilation=dilation).double()
    x = torch.rand(2, 3, 9, 8, dtype=torch.float64)
    y = conv(x)
    patches = F.unfold(x, 3, dilation=dilation, padding=padding, stride=stride)  # (B, 27, L)
    w = conv.weight.detach().flatten(1)  # (5, 27)
    ref = -(patches.unsqueeze(1) - w[None, :, :, None]).pow(2).sum(2).sqrt()  # (B, 5, L)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y.flatten(2), ref, atol=1e-5, rtol=0)
    assert (conv.weight >= 0).all() and (conv.weight <= 1).all()  # initialised in the data range


# -- MaxMatch -------------------------------------------------------------------------------------

def _rotate_slow(img: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate ``(C, H, W)`` about the centre, counter-clockwise as displayed: output pixel (i, j)
    reads the input at ``R(a) (j - cx, i - cy) + (cx, cy)``, bilinear, zeros outside."""
    c, h, w = img.shape
    a = math.radians(degrees)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    out = torch.zeros_like(img)
    for i in range(h):
        for j in range(w):
            xs = math.cos(a) * (j - cx) - math.sin(a) * (i - cy) + cx
            ys = math.sin(a) * (j - cx) + math.cos(a) * (i - cy) + cy
            x0, y0 = math.floor(xs), math.floor(ys)
            for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
                if 0 <= yy < h and 0 <= xx < w:
                    out[:, i, j] += (1 - abs(xs - xx)) * (1 - abs(ys - yy)) * img[:, yy, xx]
    return out


def _unit():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 4, 3)).double()


def test_maxmatch_equals_the_max_over_separately_augmented_inputs():
    unit = _unit()
    calls = []
    unit.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    layer = MaxMatch(unit, (15, -15, 40.0, "hflip", "vflip", lambda t: 1 - t))
    x = torch.rand(3, 2, 7, 6, dtype=torch.float64)  # not square: the rotation keeps pixel units
    y = layer(x)
    assert calls == [7 * 3]  # one batched call for all augmentations
    views = [x] + [torch.stack([_rotate_slow(im, a) for im in x]) for a in (15, -15, 40.0)]
    views += [x.flip(-1), x.flip(-2), 1 - x]
    with torch.no_grad():
        reference = torch.stack([unit(v) for v in views]).amax(0)
    assert y.shape == (3, 3)
    torch.testing.assert_close(y.detach(), reference, atol=1e-12, rtol=0)


def test_maxmatch_rotation_convention_and_exact_flip():
    layer = MaxMatch(nn.Identity(), (90, "hflip"))
    x = torch.rand(2, 1, 5, 5, dtype=torch.float64)
    views = layer.augment(x).view(3, 2, 1, 5, 5)
    assert torch.equal(views[0], x) and torch.equal(views[2], x.flip(-1))
    torch.testing.assert_close(views[1], torch.rot90(x, 1, (-2, -1)), atol=1e-12, rtol=0)
    torch.testing.assert_close(layer(x), torch.maximum(torch.maximum(x, x.flip(-1)),
                                                       torch.rot90(x, 1, (-2, -1))), atol=1e-12, rtol=0)


def test_maxmatch_gradient_reaches_the_winning_augmentation():
    unit = _unit()
    x = torch.rand(2, 2, 7, 6, dtype=torch.float64, requires_grad=True)
    MaxMatch(unit, ("hflip",))(x).sum().backward()
    assert x.grad.abs().sum() > 0 and unit[0].weight.grad.abs().sum() > 0


# -- dtype and bad inputs -------------------------------------------------------------------------

LAYERS = {
    "SoftMaxPool": (lambda: SoftMaxPool(2, 0.5), (3, 8)),
    "Mean": (lambda: Mean(4), (3, 8)),
    "Scale": (lambda: Scale(0.3), (3, 8)),
    "PositiveConv2d": (lambda: PositiveConv2d(2, 3, 3), (2, 2, 6, 6)),
    "GumbelConv2d": (lambda: GumbelConv2d(2, 3, 3, temperature=0.5), (2, 2, 6, 6)),
    "L2Conv2d": (lambda: L2Conv2d(2, 3, 3), (2, 2, 6, 6)),
    "MaxMatch": (lambda: MaxMatch(nn.Conv2d(2, 3, 3), (15, "hflip")), (2, 2, 6, 6)),
}


@pytest.mark.parametrize("name", LAYERS)
def test_every_layer_runs_and_differentiates_in_float64(name):
    make, shape = LAYERS[name]
    torch.manual_seed(0)
    layer = make().double().train()
    x = torch.rand(*shape, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    assert y.dtype == torch.float64 and torch.isfinite(y).all()
    y.pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None and p.grad.dtype == torch.float64 for p in layer.parameters())


BAD = {
    "temperature 0": (lambda: SoftMaxPool(2, temperature=0.0), "temperature"),
    "temperature < 0": (lambda: SoftMaxPool(2, temperature=-1.0), "temperature"),
    "temperature nan": (lambda: SoftMaxPool(2, temperature=float("nan")), "temperature"),
    "temperature inf": (lambda: SoftMaxPool(2, temperature=float("inf")), "temperature"),
    "set_temperature 0": (lambda: SoftMaxPool(2).set_temperature(0), "temperature"),
    "n_groups 0": (lambda: SoftMaxPool(0), "n_groups"),
    "groups do not divide": (lambda: SoftMaxPool(3)(torch.randn(2, 8)), "3 equal groups"),
    "empty width": (lambda: SoftMaxPool(2)(torch.randn(2, 0)), "2 equal groups"),
    "Mean neither": (lambda: Mean(), "exactly one of n_groups"),
    "Mean both": (lambda: Mean(2, group_size=2), "exactly one of n_groups"),
    "Mean groups": (lambda: Mean(4)(torch.randn(2, 10)), "4 equal groups"),
    "Mean group_size": (lambda: Mean(group_size=3)(torch.randn(2, 10)), "group_size=3"),
    "Mean group_size 0": (lambda: Mean(group_size=0), "group_size"),
    "Scale nan": (lambda: Scale(float("nan")), "init"),
    "Gumbel temperature": (lambda: GumbelConv2d(3, 2, 3, temperature=0), "temperature"),
    "Gumbel set_temperature": (lambda: GumbelConv2d(3, 2, 3).set_temperature(-0.1), "temperature"),
    "Gumbel k > C": (lambda: GumbelConv2d(3, 2, 3, k=4), "k must be in 1..in_channels=3"),
    "Gumbel k 0": (lambda: GumbelConv2d(3, 2, 3, k=0), "k must be"),
    "Gumbel channels": (lambda: GumbelConv2d(3, 2, 3)(torch.randn(1, 4, 6, 6)), "(B, 3, H, W)"),
    "anneal start": (lambda: exponential_anneal(1, 10, 0.0, 0.1), "start"),
    "anneal step": (lambda: exponential_anneal(-1, 10, 1.0, 0.1), "step"),
    "L2 channels": (lambda: L2Conv2d(3, 2, 3)(torch.randn(1, 2, 6, 6)), "(B, 3, H, W)"),
    "L2 init_range": (lambda: L2Conv2d(3, 2, 3, init_range=(1.0, 0.0)), "init_range"),
    "Positive channels": (lambda: PositiveConv2d(3, 2, 3)(torch.randn(1, 2, 6, 6)), "(B, 3, H, W)"),
    "Positive groups": (lambda: PositiveConv2d(3, 2, 3, groups=2), "groups=2"),
    "empty augmentations": (lambda: MaxMatch(nn.Identity(), ()), "at least one augmentation"),
    "unknown augmentation": (lambda: MaxMatch(nn.Identity(), ("spin",)), "unknown augmentation 'spin'"),
    "nan angle": (lambda: MaxMatch(nn.Identity(), (float("nan"),)), "finite degrees"),
    "MaxMatch input": (lambda: MaxMatch(nn.Identity(), (15,))(torch.randn(2, 6, 6)), "(B, C, H, W)"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_inputs_raise_one_line_errors_naming_the_argument(case):
    call, needle = BAD[case]
    with pytest.raises(InvalidInputError) as err:
        call()
    message = str(err.value)
    assert needle in message and "\n" not in message
