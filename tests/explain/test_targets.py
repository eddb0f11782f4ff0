"""Targets beyond classes: a hidden unit, a direction and a cosine similarity at a layer, checked
against gradients of the sub-network run explicitly (and, for the pullback, through the per-call-site
reference gates of pullback_reference.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pellucid.errors import InvalidInputError
from pellucid.explain import (CosineTarget, DirectionTarget, ExcitationPullback, Gradient,
                              PullbackCoverageWarning, UnitAddress, UnitTarget, counterfactual,
                              cosine_similarity_target, layer_features, scored_module)
from pellucid.explain.targets import resolve_target, select_target
from pullback_reference import ReferencePullback

TAU = 0.3


class Net(nn.Module):
    """conv -> ReLU -> [conv -> BN -> inplace ReLU] -> max pool -> linear; the block is a container
    the trace enters, the BN is fused into the ReLU after it by the pullback rewrite."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.act1 = nn.ReLU()
        self.block = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        h = self.block(self.act1(self.conv1(x)))
        return self.fc(self.pool(h).flatten(1))


class Untraceable(Net):
    def forward(self, x):
        if x.sum() > -1e9:  # data-dependent: torch.fx cannot trace it
            x = x * 1.0
        return super().forward(x)


def _prepare(model: nn.Module) -> nn.Module:
    model = model.double().eval()
    with torch.no_grad():
        model.block[1].running_mean.uniform_(-0.3, 0.3)
        model.block[1].running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(params=[0, 1])
def net(request):
    torch.manual_seed(request.param)
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5 + request.param))
    return _prepare(Net()), x


# ----------------------------------------------------------------------------------------------
# Independent references: the sub-network up to the layer, run explicitly
# ----------------------------------------------------------------------------------------------

def _features(model: Net, x: torch.Tensor, path: str) -> torch.Tensor:
    """Layer ``path``'s output, computed by calling the layers in order."""
    steps = [("conv1", model.conv1), ("act1", model.act1), ("block.0", model.block[0]),
             ("block.1", model.block[1]), ("block", lambda h: torch.relu(h)), ("pool", model.pool)]
    h = x
    for name, layer in steps:
        h = layer(h)
        if name == path:
            return h
    raise KeyError(path)


def _reference(model, x, path, score, pullback):
    """``d score(features_path(x)) / dx`` by plain autograd, or through the reference gates."""
    leaf = x.detach().clone().requires_grad_(True)
    if pullback:
        with ReferencePullback(TAU):
            value = score(_features(model, leaf, path))
    else:
        value = score(_features(model, leaf, path))
    (grad,) = torch.autograd.grad(value.sum(), leaf)
    return grad


def _rel(a, b):
    return float((a - b).norm() / b.norm())


UNITS = [("conv1:2@3,4", lambda f: f[:, 2, 3, 4]),
         ("act1:1", lambda f: f[:, 1, 4, 4]),  # no position: the centre
         ("block.0:3@5,2", lambda f: f[:, 3, 5, 2]),
         ("block.1:4@1,6", lambda f: f[:, 4, 1, 6]),  # fused into the inplace ReLU by the rewrite
         ("block:5@2,2", lambda f: f[:, 5, 2, 2]),  # a container the trace enters
         ("pool:0@1,3", lambda f: f[:, 0, 1, 3])]


@pytest.mark.parametrize("unit,pick", UNITS)
def test_unit_target_gradient_and_pullback_equal_references(net, unit, pick):
    model, x = net
    path = unit.split(":")[0]
    plain = Gradient(model).attribute(x, target=UnitTarget(unit))
    torch.testing.assert_close(plain, _reference(model, x, path, pick, False), rtol=1e-10, atol=1e-12)
    got = ExcitationPullback(model).attribute(x, target=UnitTarget(unit))
    torch.testing.assert_close(got, _reference(model, x, path, pick, True), rtol=1e-10, atol=1e-12)
    if path != "conv1":  # a ReLU lies between the input and every later unit
        assert _rel(got, plain) > 1e-3
    else:
        torch.testing.assert_close(got, plain, rtol=1e-12, atol=1e-14)


def test_unit_target_forms_agree(net):
    model, x = net
    e = ExcitationPullback(model)
    want = e.attribute(x, target=UnitTarget("block.0:3@5,2"))
    for form in (UnitTarget("block.0", 3, (5, 2)), UnitTarget(UnitAddress("block.0", 3, (5, 2))),
                 UnitTarget(" block.0:3@5,2 ")):
        assert torch.equal(e.attribute(x, target=form), want)


def test_output_unit_equals_class_target(net):
    model, x = net
    for explainer in (Gradient(model), ExcitationPullback(model)):
        assert torch.equal(explainer.attribute(x, target=UnitTarget(":3")), explainer.attribute(x, target=3))


def test_direction_target_equals_reference(net):
    model, x = net
    v = torch.randn(6, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    target = DirectionTarget("block.1", v)
    score = lambda f: (f * v).sum((1, 2, 3))  # noqa: E731
    torch.testing.assert_close(Gradient(model).attribute(x, target=target),
                               _reference(model, x, "block.1", score, False), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ExcitationPullback(model).attribute(x, target=target),
                               _reference(model, x, "block.1", score, True), rtol=1e-10, atol=1e-12)
    per_sample = DirectionTarget("block.1", v.expand(3, 6, 8, 8))
    assert torch.equal(Gradient(model).attribute(x, target=per_sample),
                       Gradient(model).attribute(x, target=target))


def test_cosine_target_at_a_layer_equals_reference(net):
    model, x = net
    x_ref = torch.randn(1, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    target = CosineTarget.from_input(model, x_ref, "act1")
    with torch.no_grad():
        ref = _features(model, x_ref, "act1")
    assert torch.equal(layer_features(model, x_ref, "act1"), ref)
    score = lambda f: F.cosine_similarity(f.flatten(1), ref.flatten(1), dim=1)  # noqa: E731
    torch.testing.assert_close(ExcitationPullback(model).attribute(x, target=target),
                               _reference(model, x, "act1", score, True), rtol=1e-10, atol=1e-12)
    # the output version is the same object with path ""
    with torch.no_grad():
        out_ref = model(x_ref)
    assert torch.equal(Gradient(model).attribute(x, target=cosine_similarity_target(out_ref)),
                       Gradient(model).attribute(x, target=CosineTarget.from_input(model, x_ref)))


def test_counterfactual_ascends_a_hidden_unit(net):
    model, x = net
    target = UnitTarget("block:5@2,2")
    result = counterfactual(model, x, target, steps=3, alpha=0.5, pixel_range=None)
    assert bool((result.scores[-1] > result.scores[0]).all())
    with torch.no_grad():
        want = _features(model, result.counterfactual, "block")[:, 5, 2, 2]
    torch.testing.assert_close(result.scores[-1], want, rtol=1e-12, atol=1e-14)


def test_scored_module_serves_code_that_scores_outputs(net):
    model, x = net
    target = UnitTarget("block.0:1@2,2")
    module = scored_module(model, target)
    features = module(x)
    assert torch.equal(features, _features(model, x, "block.0"))
    score = select_target(features, resolve_target(features, target))
    assert torch.equal(score, features[:, 1, 2, 2])
    assert scored_module(model, 2) is model
    assert not any(m._forward_hooks for m in model.modules())


def test_untraceable_model_reaches_hidden_units_through_module_replacement():
    torch.manual_seed(0)
    model = _prepare(Untraceable())
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with pytest.warns(PullbackCoverageWarning, match="falling back"):
        explainer = ExcitationPullback(model)
    pick = lambda f: f[:, 3, 5, 2]  # noqa: E731
    got = explainer.attribute(x, target=UnitTarget("block.0:3@5,2"))
    torch.testing.assert_close(got, _reference(model, x, "block.0", pick, True), rtol=1e-10, atol=1e-12)
    got_relu = explainer.attribute(x, target=UnitTarget("act1:2@3,3"))  # the swapped module itself
    torch.testing.assert_close(got_relu, _reference(model, x, "act1", lambda f: f[:, 2, 3, 3], True),
                               rtol=1e-10, atol=1e-12)
    assert type(model.act1) is nn.ReLU and not any(m._forward_hooks for m in model.modules())


def test_concurrent_hidden_targets_equal_sequential(net):
    model, x = net
    explainers = [Gradient(model), ExcitationPullback(model)]
    units = [u for u, _ in UNITS]
    calls = [(explainers[i % 2], units[i % len(units)]) for i in range(24)]
    want = [e.attribute(x, target=UnitTarget(u)) for e, u in calls]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda call: call[0].attribute(x, target=UnitTarget(call[1])), calls))
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    assert not any(m._forward_hooks for m in model.modules())


# ----------------------------------------------------------------------------------------------
# Bad targets: one-line InvalidInputError
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make,match", [
    (lambda: UnitTarget("blok.0:1"), r"no module 'blok\.0'; valid paths: conv1, .*closest: block\.0"),
    (lambda: UnitTarget("conv1:4"), r"channel 4 is out of range; 'conv1' has 4 channels \(valid 0\.\.3\)"),
    (lambda: UnitTarget("conv1:1@8,0"), r"position \(8, 0\) is out of range.*0\.\.7 x 0\.\.7"),
    (lambda: UnitTarget("conv1:1@1"), r"position \(1,\) is out of range"),
    (lambda: UnitTarget("conv1"), r"is not 'module\.path:channel'"),
    (lambda: DirectionTarget("block.1", torch.ones(6, 8, dtype=torch.float64)),
     r"direction has shape \(6, 8\).*\(6, 8, 8\) per sample"),
    (lambda: DirectionTarget("block.1", torch.ones(2, 6, 8, 8, dtype=torch.float64)),
     r"direction has shape \(2, 6, 8, 8\)"),
    (lambda: CosineTarget(torch.ones(7, dtype=torch.float64), "fc"), r"reference has shape \(7,\)"),
    (lambda: DirectionTarget("nope", torch.ones(3)), r"no module 'nope'"),
])
@pytest.mark.parametrize("method", [Gradient, ExcitationPullback])
def test_bad_targets_are_one_line_errors(net, make, match, method):
    model, x = net
    with pytest.raises(InvalidInputError, match=match) as info:
        method(model).attribute(x, target=make())
    assert "\n" not in str(info.value)
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("make,match", [
    (lambda: DirectionTarget("fc", torch.tensor([1.0, float("nan")])), "NaN"),
    (lambda: CosineTarget(torch.tensor([float("inf")])), "NaN or inf"),
    (lambda: DirectionTarget("fc", torch.ones(3, dtype=torch.long)), "floating-point"),
    (lambda: DirectionTarget(3, torch.ones(3)), "must be a str"),
    (lambda: UnitTarget("conv1", "2"), "int channel"),
    (lambda: UnitTarget(3.5), "module.path:channel"),
])
def test_bad_target_arguments_fail_at_construction(make, match):
    with pytest.raises(InvalidInputError, match=match) as info:
        make()
    assert "\n" not in str(info.value)
