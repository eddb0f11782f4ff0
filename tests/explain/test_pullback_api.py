"""Call sites of every kind, coverage report, fallback, targets, counterfactuals, bad input."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pellucid.errors import InvalidInputError
from pellucid.explain import (EXPLAINERS, ExcitationPullback, Gradient, PullbackCoverageWarning,
                              UntraceableModelError, cosine_similarity_target, counterfactual,
                              pullback_mode, rewrite_for_pullback)
from pullback_reference import reference_pullback


class EveryReLUKind(nn.Module):
    """Module (reused), F.relu inplace, torch.relu, torch.relu_, Tensor.relu(_), F.max_pool2d,
    an inplace ReLU whose input is read again afterwards, and a GELU left untouched."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        h = self.act(self.c1(x))  # module call 1
        h = F.relu(self.bn(self.c2(h)), inplace=True)  # fused with the batch norm
        h = self.act(self.c2(h))  # the same module again
        z = self.c2(h)
        y = torch.relu_(z)  # inplace: later readers of z see relu(z)
        h = y + z
        h = torch.relu(self.c2(h)) + self.c2(h).relu() + self.c2(h).relu_()
        h = F.max_pool2d(F.gelu(h), 2)
        return self.fc(self.pool(h).flatten(1))


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 8)
        self.act = nn.ReLU()
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        h = self.act(self.lin(x))
        if h.sum() > -1e9:  # always true, but a Proxy cannot decide it
            h = h + 0
        return self.out(h) + F.relu(x).sum(1, keepdim=True)  # a functional call the fallback misses


@pytest.fixture
def every_kind():
    torch.manual_seed(0)
    model = EveryReLUKind().double().eval()
    model.bn.running_mean.uniform_(-0.2, 0.2)
    x = torch.randn(3, 2, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return model, x


def test_every_call_site_kind_is_rewritten(every_kind):
    model, x = every_kind
    rewritten, report = rewrite_for_pullback(model)
    with torch.no_grad():
        assert torch.equal(rewritten(x), model(x))  # inplace aliasing preserved
    assert dict(report.relu) == {"nn.ReLU": 2, "F.relu": 1, "torch.relu_": 1, "torch.relu": 1,
                                 "Tensor.relu": 1, "Tensor.relu_": 1}
    assert dict(report.maxpool) == {"F.max_pool2d": 1, "nn.MaxPool2d": 1}
    assert dict(report.untouched) == {"F.gelu": 1}
    assert report.fused_batchnorm == 1
    assert "F.gelu x1" in str(report)
    want, counts = reference_pullback(model, x, target=4, tau=0.3)
    assert counts["relu"] == report.relu_sites and counts["maxpool"] == report.maxpool_sites
    got = ExcitationPullback(model).attribute(x, target=4)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_untraceable_model_falls_back_with_warning_and_is_restored():
    torch.manual_seed(0)
    model = Untraceable().double().eval()
    x = torch.randn(4, 6, dtype=torch.float64)
    children = dict(model.named_children())
    with pytest.warns(PullbackCoverageWarning, match="not reached"):
        explainer = ExcitationPullback(model)
    assert explainer.coverage.method == "module-replacement"
    assert explainer.coverage.relu_sites == 1
    got = explainer.attribute(x, target=0)
    # reference with the functional call left hard: gate only the module ReLU by hand
    z = model.lin(x)
    want = (model.out.weight[0] * torch.sigmoid(z / 0.3)) @ model.lin.weight + (x > 0).double()
    torch.testing.assert_close(got, want.detach(), rtol=1e-10, atol=1e-12)
    assert dict(model.named_children()) == children  # restored
    with pytest.raises(UntraceableModelError):
        with pullback_mode(model, fallback=False):
            pass
    with pytest.warns(PullbackCoverageWarning), pytest.raises(KeyError):
        with pullback_mode(model) as surrogate:
            assert type(model.act).__name__ == "ExcitationReLU"
            surrogate(x)
            raise KeyError("boom")
    assert dict(model.named_children()) == children  # restored after the exception too


def test_pullback_mode_checks_forward_and_is_reentrant(every_kind):
    model, x = every_kind
    with pullback_mode(model, example_input=x) as outer, pullback_mode(model) as inner:
        assert torch.equal(outer(x), inner(x))
        assert outer.coverage.relu_sites == inner.coverage.relu_sites == 7


def test_targets_index_per_sample_callable_and_default(every_kind):
    model, x = every_kind
    e = ExcitationPullback(model)
    per_sample = e.attribute(x, target=[0, 3, 4])
    for b, t in enumerate([0, 3, 4]):
        torch.testing.assert_close(per_sample[b:b + 1], e.attribute(x[b:b + 1], target=t))
    top = model(x).argmax(1)
    torch.testing.assert_close(e.attribute(x), e.attribute(x, target=top))
    as_fn = e.attribute(x, target=lambda out: out[:, 2])
    torch.testing.assert_close(as_fn, e.attribute(x, target=2))


@pytest.mark.parametrize("target,match", [(5, "out of range"), (-1, "out of range"),
                                          ([0, 1], "2 targets for a batch of 3"),
                                          (1.5, "integer"), (lambda out: out, "one scalar per sample")])
def test_bad_targets_are_clear_errors(every_kind, target, match):
    model, x = every_kind
    with pytest.raises(InvalidInputError, match=match):
        Gradient(model).attribute(x, target=target)


@pytest.mark.parametrize("bad,match", [(torch.zeros(3, 2, 16, 16, dtype=torch.long), "floating"),
                                       (torch.full((1, 2, 16, 16), float("nan")), "NaN"),
                                       (torch.zeros(0, 2, 16, 16), "empty"), ("img", "torch.Tensor")])
def test_bad_inputs_are_clear_errors(every_kind, bad, match):
    model, _ = every_kind
    with pytest.raises(InvalidInputError, match=match):
        ExcitationPullback(model).attribute(bad, target=0)


def test_inputs_never_modified(every_kind):
    model, x = every_kind
    before = x.clone()
    ExcitationPullback(model).attribute(x, target=1)
    counterfactual(model, x.sigmoid(), 1, steps=2, alpha=1.0)
    assert torch.equal(x, before) and not x.requires_grad


def test_counterfactual_ascends_and_respects_ball_and_range(every_kind):
    model, x = every_kind
    x01 = x.sigmoid()
    for method in EXPLAINERS:
        try:
            result = counterfactual(model, x01, target=2, steps=4, alpha=0.5, eps=1.0, method=method)
        except InvalidInputError as e:  # DeepLift refuses a ReLU module called twice per forward
            assert method == "deeplift" and "more than once" in str(e), (method, e)
            continue
        assert result.scores.shape == (5, 3)
        if method in ("gradient", "pullback"):  # ascent along the score's (soft) gradient
            assert bool((result.scores[-1] > result.scores[0]).all())  # the target score goes up
        assert float(result.difference.flatten(1).norm(dim=1).max()) <= 1.0 + 1e-9
        assert 0 <= float(result.counterfactual.min()) and float(result.counterfactual.max()) <= 1
    one = counterfactual(model, x01, target=2, steps=1, alpha=0.5, pixel_range=None)
    grad = ExcitationPullback(model).attribute(x01, target=2)
    step = 0.5 * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(one.difference, step)  # one L2-normalised step of length alpha
    with pytest.raises(InvalidInputError, match="pixel_range"):
        counterfactual(model, x, target=2, steps=1)  # x is not in [0, 1]


def test_cosine_target_morphs_toward_reference(every_kind):
    model, x = every_kind
    x01 = x.sigmoid()
    with torch.no_grad():
        reference = model(x01[2:3])
    result = counterfactual(model, x01[:2], cosine_similarity_target(reference), steps=3, alpha=0.5)
    assert bool((result.scores[-1] > result.scores[0]).all())
    assert float(result.scores.max()) <= 1 + 1e-12


def test_no_warning_for_eval_model(every_kind):
    model, x = every_kind
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ExcitationPullback(model).attribute(x, target=0)
    model.train()
    with pytest.warns(UserWarning, match="training mode"):
        Gradient(model).attribute(x, target=0)
