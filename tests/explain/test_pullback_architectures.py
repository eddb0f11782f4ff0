"""Every listed torchvision architecture (random init, calibrated batch norm, small inputs):
forward unchanged, coverage complete, pullback == the independent per-call-site reference,
tau -> 0 recovers the vanilla gradient, the user's model untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from torchvision import models as tvm

from pellucid.explain import ExcitationPullback, Gradient, pullback_mode, rewrite_for_pullback
from pellucid.models.imagenet import calibrate_batchnorm
from pullback_reference import reference_pullback

# name -> (builder kwargs, input size, ReLU call sites, max-pool call sites)
ARCHITECTURES = {
    "resnet50": ({}, 32, 49, 1),
    "resnext50_32x4d": ({}, 32, 49, 1),
    "vgg11_bn": ({"init_weights": False}, 32, 10, 5),
    "densenet121": ({}, 32, 121, 1),
    "inception_v3": ({"init_weights": False, "aux_logits": False}, 75, 94, 4),
    "googlenet": ({"init_weights": False, "aux_logits": False}, 32, 57, 13),
}


def _calibrated(name: str) -> torch.nn.Module:
    """Random init with batch-norm statistics of one random batch, so activations have unit scale
    (with default statistics deep activations shrink towards 0 and every tau looks large)."""
    torch.manual_seed(0)
    kwargs, size, _, _ = ARCHITECTURES[name]
    model = getattr(tvm, name)(weights=None, **kwargs)
    return calibrate_batchnorm(model, torch.rand(4, 3, size, size))


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def arch(request):
    name = request.param
    model = _calibrated(name)
    size = ARCHITECTURES[name][1]
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    return name, model, x, Gradient(model).attribute(x, target=5)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_forward_identical_and_coverage_complete(arch):
    name, model, x, _ = arch
    _, _, relu_sites, pool_sites = ARCHITECTURES[name]
    rewritten, report = rewrite_for_pullback(model)
    with torch.no_grad():
        assert torch.equal(rewritten(x), model(x))  # bit-identical
    assert report.method == "fx"
    assert report.relu_sites == relu_sites
    assert report.maxpool_sites == pool_sites
    assert not report.untouched


def test_pullback_equals_reference(arch):
    """In float64: float32 rounding alone moves a 100-layer gradient by ~1e-4."""
    name, model32, x32, vanilla = arch
    model, x = copy.deepcopy(model32).double(), x32.double()
    _, _, relu_sites, pool_sites = ARCHITECTURES[name]
    tau, detach = 0.3, name == "googlenet"  # GoogLeNet (13 pools) checks the detached weights
    want, counts = reference_pullback(model, x, target=5, tau=tau, detach_pool_weights=detach)
    assert counts["relu"] == relu_sites and counts["maxpool"] == pool_sites  # reference saw them all
    got = ExcitationPullback(model, temperature=tau, detach_pool_weights=detach).attribute(x, target=5)
    assert _rel(got, want) < 1e-5
    assert _rel(got.float(), vanilla) > 0.05  # the pullback is not the gradient in disguise


def test_small_temperature_recovers_gradient(arch):
    _, model, x, vanilla = arch
    errors = [_rel(ExcitationPullback(model, temperature=t).attribute(x, target=5), vanilla)
              for t in (1e-2, 1e-9)]
    assert errors[0] > 1e-3 and errors[1] < 1e-5


def test_user_model_unchanged(arch):
    _, model, x, _ = arch
    state = {k: v.clone() for k, v in model.state_dict().items()}
    structure = [(n, type(m)) for n, m in model.named_modules()]
    with torch.no_grad():
        before = model(x)
    x_copy = x.clone()
    ExcitationPullback(model).attribute(x, target=0)
    with pytest.raises(RuntimeError, match="boom"):
        with pullback_mode(model) as surrogate:
            surrogate(x).sum().backward()
            raise RuntimeError("boom")
    assert torch.equal(x, x_copy)
    assert [(n, type(m)) for n, m in model.named_modules()] == structure
    after_state = model.state_dict()
    assert state.keys() == after_state.keys()
    assert all(torch.equal(state[k], after_state[k]) for k in state)
    with torch.no_grad():
        assert torch.equal(model(x), before)
