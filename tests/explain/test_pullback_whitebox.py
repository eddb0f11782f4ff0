"""The white-box network under the excitation pullback: traced, every site listed, equal to a
site-by-site reference written here, forward unchanged, tau -> 0 the plain gradient; and a smoke test
of every registered model."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from pellucid.explain import (ExcitationPullback, Gradient, PullbackCoverageWarning, UnitTarget,
                              swap_modules)
from pellucid.models import MODELS, create_model

SITES = [("twostep", "left alone"), ("conv", "soft max"), ("conv", "relu gate"),
         ("affine", "soft max"), ("affine", "relu gate"), ("logical", "soft max")]


# ----------------------------------------------------------------------------------------------
# Reference: the white-box forward written out site by site, gates injected by hand
# ----------------------------------------------------------------------------------------------

def _soft_max(s: torch.Tensor, dim: int, tau: float, detach: bool, soft: bool = True) -> torch.Tensor:
    """Value ``max_k s_k``; gradient of ``sum_k softmax_k(s / tau) s_k`` (or the hard max)."""
    if not soft:
        return s.max(dim, keepdim=True).values
    w = torch.softmax(s / tau, dim)
    pooled = ((w.detach() if detach else w) * s).sum(dim, keepdim=True)
    return s.amax(dim, keepdim=True).detach() + pooled - pooled.detach()


def _gated_relu(z: torch.Tensor, tau: float, gate) -> torch.Tensor:
    """Value ``relu(z)``; gradient ``gate(z / tau)``."""
    linear = z * gate(z / tau).detach()
    return torch.relu(z).detach() + linear - linear.detach()


def reference_forward(model, x, tau=0.3, detach=False, gate=torch.sigmoid, soft_max=True):
    """``{layer: output}`` of the white-box forward with the surrogate gates at every site."""
    out = {"twostep": model.twostep(x)}  # left alone: its own gradient
    with torch.no_grad():
        kernels = model.conv.posed_weights()  # (1, K*P, k, k)
        features = model.affine.posed_weights()  # (F, P, H, W)
        logical = model.logical.posed_weights()  # (C, P, D)
    k = kernels.shape[-1]
    s = F.conv2d(out["twostep"], kernels.reshape(-1, 1, k, k), padding=k // 2)  # (B, K*P, H, W)
    out["conv"] = _gated_relu(_soft_max(s, 1, tau, detach, soft_max) / model.conv.scale, tau, gate)
    a = torch.einsum("bhw,fphw->bfp", out["conv"][:, 0], features)  # (B, F, P)
    out["affine"] = _gated_relu(_soft_max(a, 2, tau, detach, soft_max).squeeze(2), tau, gate)
    logits = torch.einsum("bd,cpd->bcp", out["affine"], logical)  # (B, C, P)
    out["logical"] = _soft_max(logits, 2, tau, detach, soft_max).squeeze(2)
    return out


def reference_gradient(model, x, pick, **kwargs):
    leaf = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(pick(reference_forward(model, leaf, **kwargs)).sum(), leaf)
    return grad


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(params=[0, 1, 2])
def whitebox(request):
    """A seeded white-box network (float64, eval) and a batch of images in [0, 1]."""
    torch.manual_seed(request.param)
    model = create_model("whitebox-mnist35").double().eval()
    with torch.no_grad():
        model.twostep.t0.fill_(0.35)
        model.twostep.t1.fill_(0.6)
        model.logical.features.add_(0.05 * torch.randn_like(model.logical.features))
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64,
                   generator=torch.Generator().manual_seed(10 + request.param))
    return model, x


# ----------------------------------------------------------------------------------------------
# White-box network
# ----------------------------------------------------------------------------------------------

def test_traced_with_every_site_listed_and_no_warning(whitebox):
    model, _ = whitebox
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback, no "0 call sites" warning
        explainer = ExcitationPullback(model)
    report = explainer.coverage
    assert report.method == "fx" and explainer.rewritten is not None
    assert [(site.name, site.action) for site in report.sites] == SITES
    assert report.relu_sites == 2 and report.maxpool_sites == 3
    assert sum(report.untouched.values()) == 1 and "TwoStep" in next(iter(report.untouched))
    assert [s["action"] for s in report.to_dict()["sites"]] == [a for _, a in SITES]


def test_forward_and_prediction_unchanged(whitebox):
    model, x = whitebox
    rewritten = ExcitationPullback(model).rewritten
    with torch.no_grad():
        want = model(x)
        assert torch.equal(rewritten(x), want)
        assert torch.equal(rewritten(x).argmax(1), want.argmax(1))
        torch.testing.assert_close(reference_forward(model, x)["logical"], want, rtol=1e-12, atol=1e-12)
    with pytest.raises(Exception, match=r"must lie in \[0, 1\]"):  # the input check still runs
        rewritten(x * 3)


@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("gate", ["sigmoid", "normal_cdf"])
def test_pullback_equals_site_by_site_reference(whitebox, detach, gate):
    model, x = whitebox
    fn = {"sigmoid": torch.sigmoid, "normal_cdf": torch.special.ndtr}[gate]
    for target in (0, 1):
        want = reference_gradient(model, x, lambda o: o["logical"][:, target], detach=detach, gate=fn)
        got = ExcitationPullback(model, gate=gate, detach_pool_weights=detach).attribute(x, target=target)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_pullback_differs_from_gradient_and_tau_to_zero_recovers_it(whitebox):
    model, x = whitebox
    vanilla = Gradient(model).attribute(x, target=1)
    hard_reference = reference_gradient(model, x, lambda o: o["logical"][:, 1], soft_max=False,
                                        gate=lambda u: (u > 0).to(u))
    torch.testing.assert_close(vanilla, hard_reference, rtol=1e-9, atol=1e-12)  # the reference's rules
    assert _rel(ExcitationPullback(model).attribute(x, target=1), vanilla) > 0.1
    errors = [_rel(ExcitationPullback(model, temperature=t).attribute(x, target=1), vanilla)
              for t in (1e-2, 1e-9)]
    assert errors[0] > 1e-4 and errors[1] < 1e-9


def test_hard_max_over_poses_when_max_pools_are_not_replaced(whitebox):
    model, x = whitebox
    explainer = ExcitationPullback(model, replace_maxpool=False)
    assert [site.action for site in explainer.coverage.sites] == \
        ["left alone", "left alone", "relu gate", "left alone", "relu gate", "left alone"]
    want = reference_gradient(model, x, lambda o: o["logical"][:, 0], soft_max=False)
    torch.testing.assert_close(explainer.attribute(x, target=0), want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("unit,pick", [("affine:3", lambda o: o["affine"][:, 3]),
                                       ("conv:0@9,17", lambda o: o["conv"][:, 0, 9, 17]),
                                       ("logical:1", lambda o: o["logical"][:, 1])])
def test_hidden_unit_target_equals_reference(whitebox, unit, pick):
    model, x = whitebox
    got = ExcitationPullback(model).attribute(x, target=UnitTarget(unit))
    torch.testing.assert_close(got, reference_gradient(model, x, pick), rtol=1e-9, atol=1e-12)
    plain = Gradient(model).attribute(x, target=UnitTarget(unit))
    hard = reference_gradient(model, x, pick, soft_max=False, gate=lambda u: (u > 0).to(u))
    torch.testing.assert_close(plain, hard, rtol=1e-9, atol=1e-12)
    assert _rel(got, plain) > 0.01


def test_module_replacement_fallback_reaches_the_same_sites(whitebox):
    model, x = whitebox
    children = dict(model.named_children())
    with swap_modules(model) as report:
        leaf = x.clone().requires_grad_(True)
        (got,) = torch.autograd.grad(model(leaf)[:, 0].sum(), leaf)
    assert [(site.name, site.action) for site in report.sites] == SITES
    assert dict(model.named_children()) == children  # restored
    torch.testing.assert_close(got, ExcitationPullback(model).attribute(x, target=0), rtol=1e-12,
                               atol=1e-14)


def test_user_model_untouched(whitebox):
    model, x = whitebox
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ExcitationPullback(model).attribute(x, target=UnitTarget("affine:2"))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert not any(m._forward_hooks for m in model.modules())


# ----------------------------------------------------------------------------------------------
# Smoke test: every registered model
# ----------------------------------------------------------------------------------------------

# Models whose pullback is the plain gradient, and why (asserted: the warning must name it).
NO_SITES = {  # no ReLU and no max pool: ELU / softmax networks
    "metric-mlp": "ELU", "dictionary-mlp": "softmax", "local-residual-mlp": "softmax",
    "epsilon-highway-mlp": "softmax",
}
# Models torch.fx cannot trace (the pullback falls back to module replacement), and why.
UNTRACEABLE = {
    # one fitted layer that checks its input's values in forward (no ReLU or max-pool module)
    "inh-mnist": "IncrementalNeuralHashing",
}
BUILD_KWARGS = {"fid-inception": {"weights": None}}
SMALL_SIDE = {"inception_v3": 75}  # ImageNet classifiers run on small images (adaptive pools)


def _smoke_input(name: str) -> torch.Tensor:
    shape = MODELS.get(name).input_shape
    if shape[-1] >= 224 and name != "fid-inception":  # (its final pool needs 299 x 299)
        side = SMALL_SIDE.get(name, 64)
        shape = (shape[0], side, side)
    batch = 1 if shape[-1] >= 224 else 2
    return torch.rand(batch, *shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", list(MODELS))
def test_every_registered_model_is_explainable(name):
    torch.manual_seed(0)
    model = create_model(name, **BUILD_KWARGS.get(name, {})).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explainer = ExcitationPullback(model)
    messages = [str(w.message) for w in caught if issubclass(w.category, PullbackCoverageWarning)]
    if name in UNTRACEABLE:
        assert explainer.coverage.method == "module-replacement"
        assert any("falling back" in m and UNTRACEABLE[name] in m for m in messages), messages
    else:
        assert explainer.coverage.method == "fx", messages
        if name in NO_SITES:
            assert explainer.coverage.rewritten_sites == 0
            assert NO_SITES[name] in str(explainer.coverage.untouched)
            assert messages and all("0 call sites rewritten" in m for m in messages)
        else:
            assert not messages and explainer.coverage.rewritten_sites > 0
    x = _smoke_input(name).to(next(model.parameters()).dtype)
    if explainer.rewritten is not None:
        with torch.no_grad():
            assert torch.equal(explainer.rewritten(x), model(x))  # forward unchanged
    grad = explainer.attribute(x, target=0)
    assert grad.shape == x.shape and bool(torch.isfinite(grad).all())


# ----------------------------------------------------------------------------------------------
# Adaptive max pools (the disjunctive models' global max) against a per-window loop
# ----------------------------------------------------------------------------------------------

def _reference_adaptive(x: torch.Tensor, size: tuple[int, int], tau: float, detach: bool) -> torch.Tensor:
    """Each output cell's window ``[floor(i H / oh), ceil((i + 1) H / oh))`` pooled by injection."""
    h, w = x.shape[-2:]
    rows = []
    for i in range(size[0]):
        cells = []
        for j in range(size[1]):
            r0, r1 = (i * h) // size[0], -((-(i + 1) * h) // size[0])
            c0, c1 = (j * w) // size[1], -((-(j + 1) * w) // size[1])
            window = x[..., r0:r1, c0:c1].flatten(-2)
            cells.append(_soft_max(window, -1, tau, detach))
        rows.append(torch.cat(cells, -1))
    return torch.stack(rows, -2)  # (B, C, oh, ow)


@pytest.mark.parametrize("size", [1, (3, 2), (5, 7)])
@pytest.mark.parametrize("detach", [False, True])
def test_adaptive_max_pool_pullback_equals_reference(size, detach):
    pool = torch.nn.AdaptiveMaxPool2d(size)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), pool, torch.nn.Flatten()).double().eval()
    x = torch.randn(2, 2, 9, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    explainer = ExcitationPullback(model, detach_pool_weights=detach)
    assert dict(explainer.coverage.maxpool) == {"nn.AdaptiveMaxPool2d": 1}
    with torch.no_grad():
        assert torch.equal(explainer.rewritten(x), model(x))
    leaf = x.clone().requires_grad_(True)
    out = _reference_adaptive(model[0](leaf), pool.output_size if isinstance(size, tuple) else (1, 1),
                              0.3, detach).flatten(1)
    target = min(4, out.shape[1] - 1)
    (want,) = torch.autograd.grad(out[:, target].sum(), leaf)
    torch.testing.assert_close(explainer.attribute(x, target=target), want, rtol=1e-10, atol=1e-12)
