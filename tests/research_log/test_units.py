"""Unit gradients on Gaussian noise, their alignment, and the gradient representation check."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from pellucid.errors import InvalidInputError
from pellucid.explain import (UnitAddress, gradient_alignment, gradient_representation_check,
                              noise_gradient_alignment, unit_gradients_on_noise)
from pellucid.models import LeNet

SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def lenet64():
    torch.manual_seed(1)
    return LeNet().double().eval()


def _slow_unit_gradient(model, path, index, image):
    """d unit / d image for one image: a forward hook keeps the module's output, autograd.grad."""
    kept = []
    handle = dict(model.named_modules())[path].register_forward_hook(lambda m, i, o: kept.append(o))
    try:
        leaf = image.unsqueeze(0).clone().requires_grad_(True)
        model(leaf)
        value = kept[0][(0, *index)]
        (grad,) = torch.autograd.grad(value, leaf)
    finally:
        handle.remove()
    return grad[0], value.detach()


@pytest.mark.parametrize("unit, index", [("features.3:7@4,6", (7, 4, 6)), ("features.0:2", (2, 14, 14)),
                                         ("classifier.3:5", (5,))])
def test_gradients_equal_a_loop_over_images(lenet64, unit, index):
    result = unit_gradients_on_noise(lenet64, unit, n=5, seed=3, input_shape=SHAPE, value_range=(0, 1))
    assert result.gradients.shape == (5, *SHAPE) and result.gradients.dtype == torch.float64
    assert result.unit.position == (index[1:] or None)  # spatial outputs default to the centre
    for i in range(5):
        grad, value = _slow_unit_gradient(lenet64, result.unit.path, index, result.inputs[i])
        torch.testing.assert_close(result.gradients[i], grad, rtol=0, atol=1e-13)
        torch.testing.assert_close(result.values[i], value, rtol=0, atol=1e-13)
    assert result.gradients.flatten(1).norm(dim=1).min() > 0


def test_noise_is_the_seeded_clamped_gaussian_and_repeats(lenet64):
    a = unit_gradients_on_noise(lenet64, "features.3:1", n=4, seed=7, input_shape=SHAPE, value_range=(0, 1))
    b = unit_gradients_on_noise(lenet64, UnitAddress("features.3", 1), n=4, seed=7, input_shape=SHAPE,
                                value_range=(0, 1))
    c = unit_gradients_on_noise(lenet64, "features.3:1", n=4, seed=8, input_shape=SHAPE, value_range=(0, 1))
    assert torch.equal(a.gradients, b.gradients) and torch.equal(a.inputs, b.inputs)
    assert not torch.equal(a.inputs, c.inputs)
    # defaults: mean = centre of the range, std = a quarter of its width, then the clamp
    expected = (torch.randn((4, *SHAPE), generator=torch.Generator().manual_seed(7),
                            dtype=torch.float64) * 0.25 + 0.5).clamp(0, 1)
    assert torch.equal(a.inputs, expected) and (a.mean, a.std) == (0.5, 0.25)
    free = unit_gradients_on_noise(lenet64, "features.3:1", n=4, seed=7, std=2.0, mean=-1.0,
                                   input_shape=SHAPE)
    unclamped = torch.randn((4, *SHAPE), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert torch.equal(free.inputs, unclamped * 2 - 1)


class _Raise(nn.Module):
    def forward(self, x):
        raise RuntimeError("broken layer")


def _hooks(model):
    return [(name, dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks))
            for name, m in model.named_modules()]


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()]


@pytest.mark.parametrize("broken", [False, True])
def test_the_model_is_unchanged_also_when_the_forward_raises(broken):
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3),
                          _Raise() if broken else nn.ReLU(), nn.Conv2d(3, 4, 3)).train()
    model[0].register_forward_hook(lambda m, i, o: None)  # the user's own hook stays
    hooks, (state, flags) = _hooks(model), _snapshot(model)
    with pytest.warns(UserWarning, match="training mode"):
        if broken:
            with pytest.raises(RuntimeError, match="broken layer"):
                unit_gradients_on_noise(model, "3:1", n=3, input_shape=(1, 8, 8))
        else:
            unit_gradients_on_noise(model, "3:1", n=3, input_shape=(1, 8, 8))
    assert _hooks(model) == hooks and [m.training for m in model.modules()] == flags
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items())  # BatchNorm statistics restored


def test_the_check_leaves_the_model_unchanged():
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2)).double().train()
    hooks, (state, flags) = _hooks(model), _snapshot(model)
    x = torch.randn(4, 6, dtype=torch.float64)
    x0 = x.clone()
    for method in ("jvp", "vjp"):
        with pytest.warns(UserWarning, match="training mode"):
            gradient_representation_check(model, x, method=method)
    assert _hooks(model) == hooks and [m.training for m in model.modules()] == flags
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items()) and torch.equal(x, x0)


@pytest.mark.parametrize("kwargs, message", [
    ({"unit": "nope:1"}, r"no module 'nope'; valid paths: features, features.0"),
    ({"unit": "features.3:16"}, r"channel 16 is out of range.*16 channels \(valid 0..15\)"),
    ({"unit": "features.3:1@10,3"}, r"position \(10, 3\) is out of range.*0..9 x 0..9"),
    ({"unit": "classifier.1:1@0"}, r"position \(0,\) is out of range"),
    ({"unit": "features.3"}, r"not 'module.path:channel'"),
    ({"unit": "features.3:1", "n": 0}, r"n \(the number of noise images\) must be an int >= 1"),
    ({"unit": "features.3:1", "std": 0.0}, r"std must be a finite number > 0, got 0.0"),
    ({"unit": "features.3:1", "std": -1.0}, r"std must be a finite number > 0"),
    ({"unit": "features.3:1", "mean": float("nan")}, r"mean must be a finite number"),
    ({"unit": "features.3:1", "input_shape": None}, r"input_shape is required"),
])
def test_user_errors_are_one_line(lenet64, kwargs, message):
    kwargs = {"input_shape": SHAPE, **kwargs}
    with pytest.raises(InvalidInputError, match=message) as info:
        unit_gradients_on_noise(lenet64, **kwargs)
    assert "\n" not in str(info.value)


def _bias_free_stack():
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(2, 5, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(5, 6, 3, bias=False), nn.ReLU(inplace=True), nn.Flatten(),
        nn.Linear(6 * 4 * 4, 12, bias=False), nn.ReLU(), nn.Linear(12, 3, bias=False)).double().eval()


@pytest.mark.parametrize("method", ["jvp", "vjp"])
def test_identity_holds_to_float_precision_without_biases(method):
    x = torch.randn(3, 2, 12, 12, dtype=torch.float64)
    check = gradient_representation_check(_bias_free_stack(), x, method=method, chunk_elements=5000)
    assert check.method == method and check.holds
    assert [layer.path for layer in check.layers] == [str(i) for i in range(9)]  # every leaf
    assert check["0"].units == 5 * 12 * 12 and check["0"].shape == (5, 12, 12)
    assert max(layer.max_relative_error for layer in check.layers) <= 1e-5 * 1e-3
    assert "max rel err" in str(check) and str(check).count("yes") == 9


def test_a_bias_and_a_gelu_break_it_by_the_expected_amount():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(7, 6), nn.Linear(6, 5, bias=False), nn.GELU(),
                          nn.Linear(5, 4, bias=False)).double().eval()
    x = torch.randn(5, 7, dtype=torch.float64)
    for method in ("auto", "vjp"):
        check = gradient_representation_check(model, x, method=method)
        assert not check.holds and str(check).count("NO") == 4
        # biased linear: u - <x, grad u> = b exactly
        with torch.no_grad():
            expected = (model[0].bias.abs() / model[0](x).abs()).max()
        assert check["0"].max_relative_error == pytest.approx(float(expected), rel=1e-9)
        assert check["0"].max_relative_error > 1e-3
    # the GELU alone: gelu(z) vs gelu'(z) z
    z = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    gelu_only = nn.Sequential(nn.Linear(6, 6, bias=False), nn.GELU()).double()
    check = gradient_representation_check(gelu_only, z.detach())
    assert check["0"].holds and not check["1"].holds
    pre = gelu_only[0](z)
    (slope,) = torch.autograd.grad(nn.functional.gelu(pre).sum(), pre)
    u = nn.functional.gelu(pre).detach()
    expected = ((u - slope * pre.detach()).abs() / u.abs()).max()
    assert check["1"].max_relative_error == pytest.approx(float(expected), rel=1e-9)


def test_layers_argument_and_its_errors(lenet64):
    x = torch.rand(2, *SHAPE, dtype=torch.float64)
    check = gradient_representation_check(lenet64, x, layers=["features.2", "classifier.5"])
    assert [layer.path for layer in check.layers] == ["features.2", "classifier.5"]
    assert not check["features.2"].holds  # LeNet has biases
    with pytest.raises(InvalidInputError, match="no module 'features.9'"):
        gradient_representation_check(lenet64, x, layers=["features.9"])
    with pytest.raises(InvalidInputError, match="layers is empty"):
        gradient_representation_check(lenet64, x, layers=[])
    with pytest.raises(InvalidInputError, match="tol must be a finite number > 0"):
        gradient_representation_check(lenet64, x, tol=0)
    with pytest.raises(InvalidInputError, match="method must be one of"):
        gradient_representation_check(lenet64, x, method="exact")


def test_custom_functions_without_forward_ad_fall_back_to_reverse_mode():
    from pellucid.models import create_model

    model = create_model("whitebox-mnist35").eval()
    check = gradient_representation_check(model, torch.rand(1, *SHAPE), layers=["affine", "logical"])
    assert check.method == "vjp" and [layer.units for layer in check.layers] == [8, 2]
    with pytest.raises(InvalidInputError, match="forward-mode AD; use method='vjp'"):
        gradient_representation_check(model, torch.rand(1, *SHAPE), method="jvp")


class _HalfSquaredNorm(nn.Module):
    """u(x) = |x|^2 / 2 per sample, as one channel: its gradient is x itself."""

    def forward(self, x):
        return 0.5 * x.flatten(1).pow(2).sum(1, keepdim=True)


def test_alignment_is_one_for_a_linear_unit_and_near_zero_when_the_gradient_is_the_noise():
    torch.manual_seed(4)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(784, 3, bias=False)).double()
    assert noise_gradient_alignment(linear, "1:2", n=6, input_shape=SHAPE, value_range=(0, 1)) == \
        pytest.approx(1.0, abs=1e-12)
    quadratic = nn.Sequential(_HalfSquaredNorm()).double()
    result = unit_gradients_on_noise(quadratic, "0:0", n=8, input_shape=SHAPE)  # centred noise
    torch.testing.assert_close(result.gradients, result.inputs)
    assert abs(noise_gradient_alignment(quadratic, "0:0", n=8, input_shape=SHAPE)) < 0.1
    with pytest.raises(InvalidInputError, match="n must be an int >= 2"):
        noise_gradient_alignment(linear, "1:0", n=1, input_shape=SHAPE)


def test_alignment_equals_the_mean_over_pairs():
    g = torch.randn(5, 3, 4, dtype=torch.float64)
    g[2] = 0  # a dead draw counts as cosine 0
    pairs = [0.0 if i == 2 or j == 2 else float(nn.functional.cosine_similarity(g[i].flatten(),
                                                                                 g[j].flatten(), dim=0))
             for i, j in itertools.combinations(range(5), 2)]
    assert gradient_alignment(g) == pytest.approx(sum(pairs) / len(pairs), abs=1e-14)
    flipped = torch.stack([torch.ones(10), -torch.ones(10)] * 3)  # a template flipping sign
    assert gradient_alignment(flipped) == pytest.approx(-0.2, abs=1e-12)  # (6 same - 9 opposite) / 15
