"""Positively constrained disjunctive models, and the unit-alignment benchmark's batched metrics."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pellucid.errors import InvalidInputError
from pellucid.explain.units import gradient_alignment, noise_gradient_alignment, noise_inputs
from pellucid.models import MODELS, create_model
from pellucid.models.disjunction import DirectionalNet, DisjunctionNet
from pellucid.nn import PositiveConv2d
from pellucid.nn.semantic.base import project_constraints_
from pellucid.train.optim import Adam
from pellucid.train.recipes import RECIPES

REPO = Path(__file__).resolve().parents[2]
POSITIVE = ["disjunction-positive-mnist35", "directional-positive-mnist35",
            "disjunction-positive-cifar-planes-cars", "directional-positive-cifar-planes-cars"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("unit_alignment",
                                                  REPO / "benchmarks" / "unit_alignment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _convs(model):
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, PositiveConv2d))]


def _batchnorms(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("name", POSITIVE)
def test_positive_names_build_run_and_train_one_step(name):
    spec = MODELS.get(name)
    assert name in RECIPES
    torch.manual_seed(0)
    model = create_model(name)
    assert model.positive is True
    convs = _convs(model)
    assert convs and all(isinstance(c, PositiveConv2d) for c in convs)
    assert all(not bn.affine and bn.weight is None and bn.bias is None for bn in _batchnorms(model))
    x, y = torch.rand(6, *spec.input_shape), torch.tensor([0, 1, 0, 1, 0, 1])
    out = model.train()(x)
    assert out.shape == (6, 2) and torch.isfinite(out).all()
    opt = Adam(model.parameters(), lr=1e-2)
    before = [c.weight_raw.detach().clone() for c in convs]
    F.cross_entropy(out, y).backward()
    opt.step()
    project_constraints_(model)
    assert any(not torch.equal(b, c.weight_raw) for b, c in zip(before, convs))
    assert torch.isfinite(model.eval()(x)).all()


def test_unconstrained_defaults_are_unchanged():
    for model in (DisjunctionNet(1), DirectionalNet(1, pool_padding=1)):
        assert model.positive is False
        assert all(type(c) is nn.Conv2d for c in _convs(model))
        assert all(bn.affine for bn in _batchnorms(model))


@pytest.mark.parametrize("cls, kwargs, shape, features", [
    (DisjunctionNet, {"in_channels": 1}, (1, 28, 28), (120,)),
    (DirectionalNet, {"in_channels": 1, "pool_padding": 1}, (1, 28, 28), (120,)),
    (DisjunctionNet, {"in_channels": 3}, (3, 32, 32), (120,)),
    (DirectionalNet, {"in_channels": 3}, (3, 32, 32), (120,))])
def test_positive_forward_shapes(cls, kwargs, shape, features):
    model = cls(positive=True, **kwargs).eval()
    x = torch.rand(3, *shape)
    assert model.features(x).shape == (3, *features)
    assert model(x).shape == (3, 2)


def test_weights_stay_non_negative_after_aggressive_steps_and_state_dict_loads():
    torch.manual_seed(0)
    model = DisjunctionNet(1, positive=True)
    opt = Adam(model.parameters(), lr=1.0)  # large steps drive many raw weights far below 0
    x = torch.rand(8, 1, 28, 28)
    for _ in range(5):
        opt.zero_grad()
        model.train()(x).sum().backward()  # pushes every logit down
        opt.step()
    conv = _convs(model)[0]
    assert conv.weight_raw.min() < -1  # the raw parameter is unconstrained ...
    assert conv.weight.min() >= 0  # ... the effective weight is not
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["features.0.weight_raw"] = -50 * torch.rand_like(state["features.0.weight_raw"]) - 1
    fresh = DisjunctionNet(1, positive=True)
    fresh.load_state_dict(state)
    assert fresh.features[0].weight.min() >= 0
    assert not any("features.3.weight" == k or "features.3.bias" == k for k in state)  # no BN affine


@pytest.mark.parametrize("bad", ["yes", 1, None, 0.0])
def test_bad_positive_value_is_a_one_line_error(bad):
    for build in (lambda: DisjunctionNet(positive=bad), lambda: DirectionalNet(positive=bad),
                  lambda: create_model("disjunction-mnist35", positive=bad)):
        with pytest.raises(InvalidInputError, match="positive must be True or False") as err:
            build()
        assert "\n" not in str(err.value)


# ------------------------------------------------------------------ the benchmark's metrics


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(3)
    model = DisjunctionNet(1, channels=20, parts=5, positive=False).double().eval()
    with torch.no_grad():  # non-trivial running statistics
        model.features[3].running_mean.uniform_(-0.5, 0.5)
        model.features[3].running_var.uniform_(0.5, 2.0)
    return model


def _slow_grad(model, path, image, unit):
    """d u_unit / d image for one image, by its own forward and backward."""
    kept = []
    target = model if path == "" else dict(model.named_modules())[path]
    handle = target.register_forward_hook(lambda m, i, o: kept.append(o))
    try:
        leaf = image.unsqueeze(0).clone().requires_grad_(True)
        model(leaf)
        (g,) = torch.autograd.grad(kept[0].flatten(1)[0, unit], leaf)
    finally:
        handle.remove()
    return g[0], float(kept[0].detach().flatten(1)[0, unit])


@pytest.mark.parametrize("path", ["features.3", "classifier.0", ""])
def test_per_unit_gradients_equal_a_loop_over_units_and_images(bench, tiny, path):
    x = torch.rand(4, 3, 1, 28, 28, dtype=torch.float64)
    units = bench.layer_output(tiny, path, x[0]).shape[1]
    inputs = torch.rand(units, 3, 1, 28, 28, dtype=torch.float64)
    grads, values = bench.per_unit_gradients(tiny, path, inputs, max_batch=7)  # several chunks
    for j in range(units):
        for i in range(3):
            g, v = _slow_grad(tiny, path, inputs[j, i], j)
            torch.testing.assert_close(grads[j, i], g, rtol=0, atol=1e-12)
            assert math.isclose(values[j, i], v, rel_tol=0, abs_tol=1e-12)


def _slow_scores(model, path, noise, images, fraction):
    """The docstring's definitions, one unit and one image at a time."""
    with torch.no_grad():
        acts = torch.stack([bench_out(model, path, im) for im in images])  # (N, U)
    k = math.ceil(fraction * len(images))
    rows = []
    for j in range(acts.shape[1]):
        g_noise = torch.stack([_slow_grad(model, path, z, j)[0] for z in noise])
        chosen = sorted(range(len(images)), key=lambda b: -float(acts[b, j]))[:k]
        g_real = torch.stack([_slow_grad(model, path, images[b], j)[0] for b in chosen])
        a, b = g_noise.mean(0).flatten(), g_real.mean(0).flatten()
        centred = g_noise.flatten(1) - g_noise.flatten(1).mean(1, keepdim=True)
        rows.append((gradient_alignment(g_noise), _cos(a, b), gradient_alignment(g_real),
                     gradient_alignment(centred), _cos(a - a.mean(), b - b.mean())))
    return rows


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm())) if a.norm() * b.norm() > 0 else 0.0


def bench_out(model, path, image):
    kept = []
    target = model if path == "" else dict(model.named_modules())[path]
    handle = target.register_forward_hook(lambda m, i, o: kept.append(o))
    try:
        model(image.unsqueeze(0))
    finally:
        handle.remove()
    return kept[0].flatten(1)[0]


@pytest.mark.parametrize("path", ["classifier.0", ""])
def test_unit_scores_equal_a_slow_reference_and_the_library(bench, tiny, path):
    noise = noise_inputs(5, (1, 28, 28), seed=2, mean=0.5, std=0.25, value_range=(0.0, 1.0),
                         dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(30, 1, 28, 28, generator=gen, dtype=torch.float64)
    scores = bench.unit_scores(tiny, path, noise, images, fraction=0.1)  # k = 3 images per unit
    slow = _slow_scores(tiny, path, noise, images, 0.1)
    assert len(slow) == scores["A"].numel()
    for j, (a, agreement, a_real, a_centred, agreement_centred) in enumerate(slow):
        assert math.isclose(float(scores["A"][j]), a, abs_tol=1e-10)
        assert math.isclose(float(scores["agreement"][j]), agreement, abs_tol=1e-10)
        assert math.isclose(float(scores["A_real"][j]), a_real, abs_tol=1e-10)
        assert math.isclose(float(scores["A_centred"][j]), a_centred, abs_tol=1e-10)
        assert math.isclose(float(scores["agreement_centred"][j]), agreement_centred, abs_tol=1e-10)
        lib = noise_gradient_alignment(tiny, f"{path}:{j}", 5, 2, input_shape=(1, 28, 28),
                                       value_range=(0.0, 1.0))
        assert math.isclose(float(scores["A"][j]), lib, abs_tol=1e-10)
    assert not scores["dead"].any()


def test_agreement_is_one_for_a_linear_unit_and_dead_units_score_zero(bench):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 3, bias=False), nn.ReLU()).double().eval()
    with torch.no_grad():
        model[1].weight[0] = torch.rand(784, dtype=torch.float64)  # > 0 on every input in [0, 1]
        model[1].weight[1] = -torch.rand(784, dtype=torch.float64)  # always 0 after the ReLU
    noise = noise_inputs(4, (1, 28, 28), seed=0, mean=0.5, std=0.25, value_range=(0.0, 1.0),
                         dtype=torch.float64)
    images = torch.rand(20, 1, 28, 28, dtype=torch.float64)
    scores = bench.unit_scores(model, "2", noise, images)
    assert math.isclose(float(scores["A"][0]), 1.0, abs_tol=1e-12)
    assert math.isclose(float(scores["agreement"][0]), 1.0, abs_tol=1e-12)
    assert math.isclose(float(scores["A_centred"][0]), 1.0, abs_tol=1e-12)
    assert float(scores["positive_share"][0]) == 1.0
    assert scores["dead"][1] and float(scores["A"][1]) == 0 and float(scores["agreement"][1]) == 0
