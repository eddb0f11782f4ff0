"""Explainer entry points under bad or surprising use (issue 17, items 13, 20-23): models without
ReLUs, mismatched dtypes, bad targets, models edited after the explainer was built, train-mode
models, concurrent calls on an untraceable model."""

from __future__ import annotations

import copy
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pellucid.errors import InvalidInputError
from pellucid.explain import (ExcitationPullback, Gradient, PullbackCoverageWarning, counterfactual,
                              pullback_mode, rewrite_for_pullback)
from pellucid.nn.metric.invex import ActNorm


def _plain_gradient(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    leaf = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(leaf)[:, target].sum(), leaf)
    return grad


class SmallConvNet(nn.Module):
    """Traceable: conv, batch norm, ReLU, max pool, a scale read from a plain attribute, linear."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.scale = 1.0
        self.fc = nn.Linear(4 * 4 * 4, classes)

    def forward(self, x):
        h = self.pool(self.act(self.bn(self.conv(x))))
        return self.fc(h.flatten(1) * self.scale)


def _conv_net(seed: int = 0, dtype: torch.dtype = torch.float64) -> SmallConvNet:
    torch.manual_seed(seed)
    model = SmallConvNet().to(dtype).eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model


def _images(batch: int = 3, dtype: torch.dtype = torch.float64, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 2, 8, 8, generator=torch.Generator().manual_seed(seed)).to(dtype)


# ----------------------------------------------------------------------------------------------
# item 13: no ReLU / max pool -> the pullback is the plain gradient; say so
# ----------------------------------------------------------------------------------------------

class NoReLUUntraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.tanh(self.lin(x))
        if h.sum() > -1e9:  # data-dependent: torch.fx cannot trace it
            h = h * 1.0
        return self.out(h)


def test_item13_model_without_relu_or_maxpool_warns_plain_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double().eval()
    x = torch.randn(4, 6, dtype=torch.float64)
    with pytest.warns(PullbackCoverageWarning, match="0 call sites rewritten.*plain gradient"):
        explainer = ExcitationPullback(model)
    assert explainer.coverage.relu_sites == explainer.coverage.maxpool_sites == 0
    assert "0 call sites rewritten" in str(explainer.coverage)
    assert torch.equal(explainer.attribute(x, target=1), Gradient(model).attribute(x, target=1))
    with pytest.warns(PullbackCoverageWarning, match="0 call sites rewritten"):
        with pullback_mode(model) as surrogate:
            assert surrogate.coverage.relu_sites == 0


def test_item13_untraceable_model_without_relu_modules_warns_plain_gradient():
    torch.manual_seed(0)
    model = NoReLUUntraceable().double().eval()
    with pytest.warns(PullbackCoverageWarning) as record:
        explainer = ExcitationPullback(model)
    assert any("0 call sites rewritten" in str(w.message) for w in record)
    assert "0 call sites rewritten" in str(explainer.coverage)


def test_item13_report_counts_rewritten_sites_and_no_warning_with_relus():
    model = _conv_net()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explainer = ExcitationPullback(model)
    assert "2 call sites rewritten" in str(explainer.coverage)  # one ReLU, one max pool


# ----------------------------------------------------------------------------------------------
# item 20: dtypes and targets checked at the entry point
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", [Gradient, ExcitationPullback])
def test_item20_input_dtype_differing_from_model_is_clear_error(dtype, method):
    model = _conv_net(dtype=torch.float32)
    x = _images(dtype=dtype)
    explainer = method(model)
    with pytest.raises(InvalidInputError, match=rf"{dtype}.*torch\.float32.*x\.to\(.*model\.to\(") as info:
        explainer.attribute(x, target=0)
    message = str(info.value)
    assert isinstance(info.value, TypeError)
    assert "\n" not in message and str(dtype) in message and "torch.float32" in message
    for steps in (0, 2):
        with pytest.raises(InvalidInputError, match=str(dtype)):
            counterfactual(model, x, target=0, steps=steps, alpha=0.5)


def test_item20_device_mismatch_is_clear_error():
    model = _conv_net().to("meta")
    with pytest.raises(InvalidInputError, match=r"inputs are on device cpu.*meta.*x\.to\('meta'\)"):
        Gradient(model).attribute(_images(), target=0)


def test_item20_float64_model_with_float64_inputs_matches_float64_gradient():
    model = _conv_net(dtype=torch.float64)
    x = _images(dtype=torch.float64)
    got = Gradient(model).attribute(x, target=3)
    assert got.dtype == torch.float64
    assert torch.equal(got, _plain_gradient(model, x, 3))
    pullback = ExcitationPullback(model, temperature=1e-6).attribute(x, target=3)
    assert pullback.dtype == torch.float64
    torch.testing.assert_close(pullback, got, rtol=1e-6, atol=1e-9)  # tau -> 0: the plain gradient
    result = counterfactual(model, x, target=3, steps=2, alpha=0.5)
    assert result.counterfactual.dtype == torch.float64


def test_item20_bfloat16_model_with_bfloat16_inputs_works():
    model = _conv_net(dtype=torch.bfloat16)
    x = _images(dtype=torch.bfloat16)
    got = ExcitationPullback(model).attribute(x, target=0)
    assert got.dtype == torch.bfloat16 and bool(torch.isfinite(got).all()) and bool(got.abs().sum() > 0)


@pytest.mark.parametrize("target,match", [
    (10 ** 30, r"out of range.*valid targets 0\.\.4"),
    (-10 ** 30, r"out of range.*valid targets 0\.\.4"),
    ([0, 10 ** 30, 1], r"valid targets 0\.\.4"),
    (np.int64(7), r"out of range.*valid targets 0\.\.4"),
    (torch.zeros(3, 1, dtype=torch.long), r"shape \(3, 1\).*\(3,\)"),
    ([[0, 1, 2]], r"shape \(1, 3\)"),
    (torch.tensor([0.0, 1.0, 2.0]), "integer"),
    ("cat", "integer"),
    (True, "integer"),
])
def test_item20_bad_integer_targets_are_clear_errors(target, match):
    model = _conv_net()
    x = _images()
    for explainer in (Gradient(model), ExcitationPullback(model)):
        with pytest.raises(InvalidInputError, match=match) as info:
            explainer.attribute(x, target=target)
        assert "\n" not in str(info.value)
    with pytest.raises(InvalidInputError, match=match):
        counterfactual(model, x, target=target, steps=1, alpha=0.5)


def test_item20_valid_target_shapes_still_work():
    model = _conv_net()
    x = _images()
    e = Gradient(model)
    want = e.attribute(x, target=[2, 2, 2])
    for target in (2, np.int64(2), torch.tensor(2), torch.tensor([2]), [2], (2, 2, 2),
                   torch.tensor([2, 2, 2], dtype=torch.int32)):
        assert torch.equal(e.attribute(x, target=target), want)


# ----------------------------------------------------------------------------------------------
# item 21: a model edited after the explainer was built is explained as it is now
# ----------------------------------------------------------------------------------------------

class DirectParameter(nn.Module):
    """Uses its parameters directly (``F.linear(x, self.weight)``): fx reads them by attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 6))
        self.head = nn.Parameter(torch.randn(3, 8))

    def forward(self, x):
        return F.linear(F.relu(F.linear(x, self.weight)), self.head)


def _fresh(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    return ExcitationPullback(model).attribute(x, target=target)


def test_item21_swapped_layer_is_explained_not_the_stale_copy():
    model, x = _conv_net(), _images()
    explainer = ExcitationPullback(model)
    before = explainer.attribute(x, target=1)
    torch.manual_seed(5)
    model.fc = nn.Linear(4 * 4 * 4, 5).double()
    got = explainer.attribute(x, target=1)
    assert torch.equal(got, _fresh(model, x, 1))
    assert not torch.equal(got, before)
    assert explainer.rewritten.fc is model.fc  # the rewritten copy is rebuilt too


def test_item21_load_state_dict_and_inplace_edits_are_explained():
    model, other, x = _conv_net(0), _conv_net(1), _images()
    explainer = ExcitationPullback(model)
    model.load_state_dict(other.state_dict())  # in place: the rewritten copy shares the modules
    assert torch.equal(explainer.attribute(x, target=2), _fresh(model, x, 2))
    with torch.no_grad():
        model.conv.weight.data.copy_(_conv_net(2).conv.weight)  # in-place weight edit
    assert torch.equal(explainer.attribute(x, target=2), _fresh(model, x, 2))


def test_item21_load_state_dict_assign_new_parameter_objects():
    torch.manual_seed(0)
    model = DirectParameter().double()
    torch.manual_seed(1)
    other = DirectParameter().double()
    x = torch.randn(4, 6, dtype=torch.float64)
    explainer = ExcitationPullback(model)
    before = explainer.attribute(x, target=0)
    model.load_state_dict(other.state_dict(), assign=True)  # fresh Parameter objects
    got = explainer.attribute(x, target=0)
    assert torch.equal(got, _fresh(model, x, 0))
    assert not torch.equal(got, before)


def test_item21_changed_module_attributes_are_explained():
    model, x = _conv_net(), _images()
    explainer = ExcitationPullback(model)
    model.scale = 3.0  # a plain attribute read in forward (fx bakes it into the graph)
    assert torch.equal(explainer.attribute(x, target=4), _fresh(model, x, 4))
    model.pool.kernel_size = 1  # the max pool's geometry
    model.pool.stride = 2
    model.fc = nn.Linear(4 * 4 * 4, 5).double()
    assert torch.equal(explainer.attribute(x, target=4), _fresh(model, x, 4))
    model.act, model.pool = nn.Tanh(), nn.AvgPool2d(2)  # no site left: now a plain gradient
    with pytest.warns(PullbackCoverageWarning, match="0 call sites rewritten"):
        got = explainer.attribute(x, target=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(got, _fresh(model, x, 4))
    assert explainer.coverage.relu_sites == explainer.coverage.maxpool_sites == 0
    assert torch.equal(got, Gradient(model).attribute(x, target=4))


class ModeAndFunction(nn.Module):
    """Reads ``self.training`` and calls a function attribute: fx bakes both into the graph."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 8)
        self.fn = torch.tanh
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        h = F.relu(self.lin(x))
        if self.training:
            h = h * 2.0
        return self.out(self.fn(h))


def test_item21_mode_change_and_function_attribute_are_explained():
    torch.manual_seed(0)
    model = ModeAndFunction().double().eval()
    x = torch.randn(4, 6, dtype=torch.float64)
    explainer = ExcitationPullback(model)
    model.train()
    assert torch.equal(explainer.attribute(x, target=2), _fresh(model, x, 2))
    model.fn = torch.sigmoid
    assert torch.equal(explainer.attribute(x, target=2), _fresh(model, x, 2))
    model.eval()
    fresh = _fresh(model, x, 2)
    assert torch.equal(explainer.attribute(x, target=2), fresh)
    model.fn = torch.tanh
    assert not torch.equal(explainer.attribute(x, target=2), fresh)


# ----------------------------------------------------------------------------------------------
# item 22: explaining never changes the model (train-mode batch norm, ActNorm initialisation)
# ----------------------------------------------------------------------------------------------

class TrainModeNet(nn.Module):
    """Batch norm, dropout and, in the untraceable variant, ActNorm (initialised from the first
    training batch). Inputs ``(B, 6, L)`` pass the batch norm (which updates its statistics) and
    then raise."""

    def __init__(self, untraceable: bool = False) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(6)
        # (fx bakes ActNorm's initialisation branch into a traced graph: untraceable variant only)
        self.norm = ActNorm(6) if untraceable else nn.Identity()
        self.lin = nn.Linear(6, 8)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(0.1)
        self.out = nn.Linear(8, 3)
        self.untraceable = untraceable

    def forward(self, x):
        h = self.act(self.lin(self.norm(self.bn(x))))
        if self.untraceable and h.sum() > -1e9:
            h = h * 1.0
        return self.out(self.drop(h))


def _state(model: nn.Module) -> tuple[dict, dict]:
    tensors = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    return tensors, {name: m.training for name, m in model.named_modules()}


def _assert_state_equal(model: nn.Module, state: tuple[dict, dict]) -> None:
    tensors, flags = state
    now = model.state_dict(keep_vars=True)
    assert now.keys() == tensors.keys()
    for k, v in tensors.items():
        assert torch.equal(now[k].detach(), v), k  # bit-equal, num_batches_tracked included
    assert {name: m.training for name, m in model.named_modules()} == flags


@pytest.mark.parametrize("untraceable", [False, True])
def test_item22_train_mode_model_state_unchanged_by_attribute_and_counterfactual(untraceable):
    torch.manual_seed(0)
    model = TrainModeNet(untraceable).double()
    model.train()
    model.drop.eval()  # mixed flags must come back as they were
    x = torch.rand(4, 6, dtype=torch.float64)
    state = _state(model)
    assert not untraceable or not bool(model.norm.initialised)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for method in (Gradient, ExcitationPullback):
            method(model).attribute(x, target=1)
            _assert_state_equal(model, state)
            counterfactual(model, x, target=1, steps=2, alpha=0.5, method=method.name)
            _assert_state_equal(model, state)
            with pytest.raises(RuntimeError):  # raised inside the forward, after the batch norm
                method(model).attribute(torch.rand(4, 6, 2, dtype=torch.float64), target=1)
            _assert_state_equal(model, state)
            with pytest.raises(InvalidInputError, match="one scalar per sample"):
                method(model).attribute(x, target=lambda out: out)  # raises after the forward
            _assert_state_equal(model, state)
    with pytest.warns(UserWarning, match="training mode"):
        Gradient(model).attribute(x, target=0)


# ----------------------------------------------------------------------------------------------
# item 23: the module-swap fallback is thread-safe and always restores the model
# ----------------------------------------------------------------------------------------------

class DeepUntraceable(nn.Module):
    """Several ``nn.ReLU`` modules and data-dependent control flow (falls back to module swaps)."""

    def __init__(self, width: int = 96, depth: int = 6) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.acts = nn.ModuleList(nn.ReLU() for _ in range(depth))
        self.out = nn.Linear(width, 4)

    def forward(self, x):
        if x.sum() > 0:
            x = x * 1.0
        for layer, act in zip(self.layers, self.acts):
            x = act(layer(x)) + 0.1 * x
        return self.out(x)


def test_item23_concurrent_calls_on_untraceable_model_equal_sequential():
    torch.manual_seed(0)
    model = DeepUntraceable().double().eval()
    x = torch.randn(32, 96, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    gradient = Gradient(model)
    with pytest.warns(PullbackCoverageWarning):
        pullback = ExcitationPullback(model)
    calls = [(gradient if i % 2 == 0 else pullback, i % 4) for i in range(30)]
    want = [e.attribute(x, target=t) for e, t in calls]
    assert not torch.equal(gradient.attribute(x, target=1), pullback.attribute(x, target=1))
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda call: call[0].attribute(x, target=call[1]), calls))
    wrong = [i for i, (g, w) in enumerate(zip(got, want)) if not torch.equal(g, w)]
    assert not wrong, f"{len(wrong)} of {len(calls)} concurrent calls differ from the sequential answer"
    assert all(type(a) is nn.ReLU for a in model.acts)


class RaisesInside(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 8)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        h = self.act(self.lin(x))
        if h.sum() > 1e9:  # data-dependent: untraceable; raises inside the swapped forward
            raise RuntimeError("activation overflow")
        return self.out(h)


def test_item23_model_restored_after_exception_inside_swapped_forward():
    torch.manual_seed(0)
    model = RaisesInside().double().eval()
    modules = {name: m for name, m in model.named_modules()}
    with pytest.warns(PullbackCoverageWarning):
        explainer = ExcitationPullback(model)
    x = torch.randn(4, 6, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="activation overflow"):
        explainer.attribute(x * 1e12, target=0)
    assert {name: m for name, m in model.named_modules()} == modules
    assert all(m is modules[name] for name, m in model.named_modules())
    assert type(model.act) is nn.ReLU and type(model.pool) is nn.MaxPool2d
    assert torch.equal(Gradient(model).attribute(x, target=0), _plain_gradient(model, x, 0))
    got = explainer.attribute(x, target=0)
    assert not torch.equal(got, _plain_gradient(model, x, 0))  # the pullback still runs


def test_item23_rewrite_does_not_touch_user_model():
    model = _conv_net()
    before = copy.deepcopy(model.state_dict())
    modules = dict(model.named_modules())
    rewrite_for_pullback(model)
    assert dict(model.named_modules()) == modules
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
