"""Surrogate gradients (BPDA) for the white-box layers: the forward stays exact, the backward tends
to the exact gradient as the temperature goes to 0, the model is always restored, bad
temperatures are one-line errors."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
import torch
import torch.nn.functional as F

from pellucid.errors import ConfigError
from pellucid.models.whitebox import WhiteBoxNet
from pellucid.robust.surrogate import (LayerSurrogates, SurrogateTemperatures, surrogate_gradients,
                                       twostep_widened, whitebox_parts)

TEMPERATURES = (1e-2, 1e-4, 1e-6)


@pytest.fixture(scope="module")
def small_model():
    """A seeded white-box network on 16 x 16 images: every layer kind, cheap to differentiate."""
    torch.manual_seed(3)
    model = WhiteBoxNet(image_size=16, patch_size=10, n_rotations=8, n_affine_poses=6).double().eval()
    with torch.no_grad():  # steeper steps than the initialisation, like a trained TwoStep
        model.twostep.scales.copy_(torch.tensor([0.01, 0.2, 0.3, 0.02]))
        model.twostep.t0.fill_(0.35)
        model.twostep.t1.fill_(0.6)
    return model


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 16, 16, generator=g, dtype=torch.float64)
    return x, torch.tensor([0, 1, 0, 1, 1, 0])


def _layers(model):
    """(name, module, its input) for each layer of ``model``'s forward."""
    def inputs(x):
        parts = whitebox_parts(model, x)
        return {"twostep": x, "conv": parts["pixels"], "affine": parts["conv"], "logical": parts["affine"]}
    return inputs


def _grad(f, x, weights):
    leaf = x.detach().clone().requires_grad_(True)
    out = f(leaf)
    (g,) = torch.autograd.grad((out * weights).sum(), leaf)
    return out.detach(), g


@pytest.mark.parametrize("name", ["twostep", "conv", "affine", "logical"])
def test_each_surrogate_layer_has_the_exact_forward(small_model, images, name):
    x, _ = images
    layer_input = _layers(small_model)(x)[name]
    module = getattr(small_model, name)
    exact = module(layer_input)
    with surrogate_gradients(small_model, 0.3) as surrogates:
        leaf = layer_input.clone().requires_grad_(True)
        out = module(leaf)
        assert out.grad_fn is not None
        assert torch.equal(out.detach(), exact)
        assert torch.equal(surrogates.layer(module, leaf).detach(), exact)


def test_the_whole_model_has_the_exact_forward_at_every_temperature(small_model, authors_model,
                                                                    mnist35_test, images):
    x, _ = images
    real = mnist35_test.images[:8]
    for model, inputs in ((small_model, x), (authors_model, real)):
        exact = model(inputs)
        for tau in (10.0, 0.3, 1e-3):
            with surrogate_gradients(model, tau):
                leaf = inputs.clone().requires_grad_(True)
                assert torch.equal(model(leaf).detach(), exact)
            assert torch.equal(whitebox_parts(model, inputs)["logits"], exact)


@pytest.mark.parametrize("name", ["twostep", "conv", "affine", "logical"])
def test_each_surrogate_backward_tends_to_the_exact_gradient(small_model, images, name):
    x, _ = images
    layer_input = _layers(small_model)(x)[name].detach()
    module = getattr(small_model, name)
    weights = torch.randn(module(layer_input).shape, generator=torch.Generator().manual_seed(1),
                          dtype=torch.float64)
    _, exact = _grad(module, layer_input, weights)
    errors = []
    for tau in TEMPERATURES:
        with surrogate_gradients(small_model, tau):
            _, g = _grad(module, layer_input, weights)
        errors.append(float((g - exact).norm() / exact.norm()))
    assert errors[0] >= errors[1] >= errors[2] and errors[0] > errors[2] and errors[2] < 1e-4, errors
    if name != "logical":  # a wide surrogate is a different gradient (the logical max has 4 poses)
        with surrogate_gradients(small_model, 1.0):
            _, wide = _grad(module, layer_input, weights)
        assert float((wide - exact).norm() / exact.norm()) > 1e-2


def test_twostep_surrogate_is_the_layer_with_wider_steps(small_model):
    layer = small_model.twostep
    x = torch.linspace(0, 1, 1001, dtype=torch.float64).view(1, 1, 1, -1)
    assert torch.allclose(twostep_widened(layer, x, 1e-12), layer(x), atol=1e-9)
    wide = twostep_widened(layer, x, 0.2)
    for value in (layer.t0, layer.t1):  # the anchor values stay: +-a at the thresholds
        at = torch.full((1, 1, 1, 1), value.item(), dtype=torch.float64)
        assert float(twostep_widened(layer, at, 0.2)) == pytest.approx(float(layer(at)), abs=1e-9)
    # far from the thresholds the exact slope vanishes; the wider steps keep a usable one
    leaf = x.clone().requires_grad_(True)
    (slope_exact,) = torch.autograd.grad(layer(leaf).sum(), leaf)
    leaf = x.clone().requires_grad_(True)
    (slope_wide,) = torch.autograd.grad(twostep_widened(layer, leaf, 0.2).sum(), leaf)
    near_zero = x.flatten() < 0.2
    assert (slope_wide.flatten()[near_zero] > 5 * slope_exact.flatten()[near_zero]).all()
    assert wide.min() >= -1 - 1e-9 and wide.max() <= 1 + 1e-9


def test_model_gradient_tends_to_the_exact_one_on_the_real_model(authors_model, mnist35_test):
    x, y = mnist35_test.images[:8], mnist35_test.labels[:8]
    ce = lambda m: lambda t: F.cross_entropy(m(t), y, reduction="none")  # noqa: E731
    _, exact = _grad(ce(authors_model), x, torch.ones(8))
    errors = []
    for tau in (1e-2, 1e-4, 1e-7):  # float32: 1e-7 is still a change of the widths (>= 1e-3)
        with surrogate_gradients(authors_model, tau):
            _, g = _grad(ce(authors_model), x, torch.ones(8))
        errors.append(float((g - exact).norm() / exact.norm()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-3, errors


def test_smooth_forward_is_the_surrogate_function_itself(small_model, images):
    x, _ = images
    smooth = LayerSurrogates(SurrogateTemperatures.of(0.2), smooth_forward=True)
    out = whitebox_parts(small_model, x, smooth)["logits"]
    assert not torch.equal(out, small_model(x))  # a different (smooth) function
    # the conv layer's blockwise smooth pool against plain autograd on its soft pool
    conv, pixels = small_model.conv, small_model.twostep(x)
    leaf = pixels.clone().requires_grad_(True)
    scores = conv.match(leaf, smooth.posed(conv))
    ref = F.softplus((torch.softmax(scores / 0.2, 2) * scores).sum(2) / conv.scale, beta=5.0)
    (g_ref,) = torch.autograd.grad(ref.sum(), leaf)
    leaf2 = pixels.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(smooth.layer(conv, leaf2).sum(), leaf2)
    assert torch.allclose(g, g_ref, atol=1e-10)


def test_the_model_is_restored_also_after_errors(small_model, images):
    x, _ = images
    before = {k: v.clone() for k, v in small_model.state_dict().items()}
    flags = [p.requires_grad for p in small_model.parameters()]
    marker = lambda t: t  # noqa: E731  (a user's own instance forward is put back as it was)
    small_model.affine.forward = marker
    try:
        with pytest.raises(RuntimeError, match="inside"):
            with surrogate_gradients(small_model, 0.1):
                assert "forward" in small_model.conv.__dict__
                raise RuntimeError("inside the block")
        assert small_model.affine.__dict__["forward"] is marker
    finally:
        del small_model.affine.forward
    for m in small_model.modules():
        assert "forward" not in m.__dict__
    assert all(torch.equal(v, before[k]) for k, v in small_model.state_dict().items())
    assert [p.requires_grad for p in small_model.parameters()] == flags
    with surrogate_gradients(small_model, 0.1):  # no parameter gradient inside the block
        leaf = x.clone().requires_grad_(True)
        small_model(leaf).sum().backward()
    assert all(p.grad is None for p in small_model.parameters())


def test_concurrent_surrogate_blocks_on_one_model_are_serialised(small_model, images):
    x, y = images
    loss = lambda t: F.cross_entropy(small_model(t), y, reduction="sum")  # noqa: E731

    def gradient(tau):
        with surrogate_gradients(small_model, tau):
            leaf = x.clone().requires_grad_(True)
            return torch.autograd.grad(loss(leaf), leaf)[0]

    taus = [0.3, 0.03, 0.003, 0.3, 0.03, 0.003, 0.3, 0.03]
    expected = {tau: gradient(tau) for tau in set(taus)}
    results: dict[int, torch.Tensor] = {}

    def work(i):
        for _ in range(3):
            results[i] = gradient(taus[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(taus))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(results[i], expected[taus[i]]) for i in range(len(taus)))
    assert all("forward" not in m.__dict__ for m in small_model.modules())


@pytest.mark.parametrize("value", [0, -0.1, float("nan"), float("inf"), "abc", None])
def test_a_bad_temperature_is_a_one_line_error_before_any_change(small_model, value):
    with pytest.raises(ConfigError) as err:
        with surrogate_gradients(small_model, value):
            pytest.fail("entered the block")
    msg = str(err.value)
    assert "temperature" in msg and "positive finite" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="^poses must be"):
        SurrogateTemperatures.of(0.1, poses=-1.0)
    assert all("forward" not in m.__dict__ for m in small_model.modules())


def test_explain_does_not_import_robust():
    probe = ("import sys, pellucid.explain, pellucid.explain.gates\n"
             "print(sorted(m for m in sys.modules if m.startswith('pellucid.robust')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
