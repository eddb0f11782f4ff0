"""Activation patterns and path stability: every ReLU-like site and max pool, checked by hand."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pellucid.errors import InvalidInputError
from pellucid.explain.paths import (ActivationPatterns, PathStabilityTracker, activation_patterns,
                                    pattern_agreement)


class MixedSites(nn.Module):
    """A ReLU module, a functional relu, a tensor-method relu, an in-place relu, a leaky relu, a max
    pool module and a functional adaptive max pool: every way a site can be called."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(3 * 4 * 4, 10)
        self.fc2 = nn.Linear(10, 6)
        self.fc3 = nn.Linear(6, 2)

    def stages(self, x):
        """The same computation, step by step, for the slow reference."""
        a = self.conv(x)
        b = F.relu(a)
        c, pool_idx = F.max_pool2d_with_indices(b, 2)
        d = self.fc1(c.flatten(1))
        e = d.relu()
        f = self.fc2(e)
        g = F.leaky_relu(f, 0.1)
        h = g.clone()
        torch.relu_(h)
        return {"gates": [b > 0, e > 0, g > 0, h > 0], "pool": pool_idx,
                "adaptive": F.adaptive_max_pool1d(h[:, None, :], 2, return_indices=True)[1],
                "out": self.fc3(h)}

    def forward(self, x):
        h = self.pool(self.relu(self.conv(x)))
        h = self.fc1(h.flatten(1)).relu()
        h = F.leaky_relu(self.fc2(h), 0.1)
        h = h.clone()
        torch.relu_(h)
        F.adaptive_max_pool1d(h[:, None, :], 2)  # a pool whose output is unused still is a site
        return self.fc3(h)


def test_patterns_equal_a_step_by_step_reference():
    model = MixedSites().eval()
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    got = activation_patterns(model, x)
    ref = model.stages(x)
    assert got.sites == ["relu:0", "max_pool2d:0", "relu:1", "leaky_relu:0", "relu:2",
                         "adaptive_max_pool1d:0"]
    gates = [got.patterns[i] for i in (0, 2, 3, 4)]
    for g, r in zip(gates, ref["gates"]):
        assert g.dtype == torch.bool and torch.equal(g, r)
    assert torch.equal(got.patterns[1], ref["pool"]) and torch.equal(got.patterns[5], ref["adaptive"])
    assert got.n_bits == sum(p.numel() for p in got.patterns)


def test_recording_leaves_outputs_inputs_and_model_unchanged():
    model = MixedSites().train()
    x = torch.rand(3, 1, 8, 8)
    x0, state = x.clone(), {k: v.clone() for k, v in model.state_dict().items()}
    want = model(x)
    activation_patterns(model, x)
    assert torch.equal(x, x0) and model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert torch.equal(model(x), want)


def test_pool_called_with_return_indices_still_returns_both():
    class PoolWithIndices(nn.Module):
        def forward(self, x):
            out, idx = F.max_pool2d(x, 2, return_indices=True)
            return out.flatten(1) + idx.flatten(1).float() * 0

    x = torch.rand(2, 1, 4, 4)
    got = activation_patterns(PoolWithIndices(), x)
    assert got.sites == ["max_pool2d:0"]
    assert torch.equal(got.patterns[0], F.max_pool2d_with_indices(x, 2)[1])


def test_whitebox_model_exposes_gates_and_poses():
    from pellucid.models import create_model

    torch.manual_seed(0)
    model = create_model("whitebox-mnist35").eval()
    x = torch.rand(2, 1, 28, 28)
    got = activation_patterns(model, x)
    trace = model.trace(x)
    assert [s for s in got.sites if s.startswith("pose:")] == ["pose:conv_pose", "pose:affine_pose",
                                                              "pose:logical_pose"]
    assert torch.equal(got.patterns[got.sites.index("pose:affine_pose")], trace["affine_pose"])
    assert any(s.startswith("relu:") for s in got.sites)


def _flip(p: ActivationPatterns, site: int, k: int) -> ActivationPatterns:
    patterns = [t.clone() for t in p.patterns]
    flat = patterns[site].view(-1)
    flat[:k] = ~flat[:k] if flat.dtype == torch.bool else flat[:k] + 1
    return ActivationPatterns(list(p.sites), patterns)


def test_agreement_is_one_minus_the_normalised_hamming_distance():
    model = MixedSites().eval()
    p = activation_patterns(model, torch.rand(4, 1, 8, 8))
    assert pattern_agreement(p, p)["overall"] == 1.0
    q = _flip(_flip(p, 0, 7), 1, 3)  # 7 gates and 3 pool argmaxes differ
    agree = pattern_agreement(p, q)
    assert agree["overall"] == pytest.approx(1 - 10 / p.n_bits, abs=1e-12)
    assert agree["sites"]["relu:0"] == pytest.approx(1 - 7 / p.patterns[0].numel())
    assert agree["sites"]["relu:1"] == 1.0


def test_tracker_records_each_epoch_of_the_shared_trainer(tmp_path):
    from pellucid.data import ImageDataset
    from pellucid.models import create_model
    from pellucid.train import TrainConfig, fit

    g = torch.Generator().manual_seed(0)
    images = torch.rand(120, 1, 28, 28, generator=g)
    labels = (images.mean((1, 2, 3)) > images.mean()).long()
    data = ImageDataset(images, labels, ("low", "high"), "random", torch.arange(120))
    torch.manual_seed(0)
    model = create_model("lenet-mnist35")
    calls = []
    tracker = PathStabilityTracker(images[:16], measure=lambda m, probe: calls.append(m.training) or 0.5)
    fit(model, data, data.subset(slice(0, 20)), TrainConfig(epochs=3, batch_size=40, val_size=0,
                                                            val_pgd_steps=0, noise_p=0.0),
        tmp_path / "run", model_name="lenet-mnist35", progress=False, on_epoch=tracker)
    rows = tracker.summary()
    assert [r["epoch"] for r in rows] == [1, 2, 3] and calls == [False] * 3
    assert rows[0]["stability_prev"] is None and rows[-1]["stability_final"] == 1.0
    assert all(0.0 <= r["stability_prev"] <= 1.0 for r in rows[1:])
    assert [r["measure"] for r in rows] == [0.5] * 3
    # the stability since the last epoch is the agreement of the recorded patterns
    assert rows[2]["stability_prev"] == pattern_agreement(tracker.patterns[2], tracker.patterns[1])["overall"]


def test_concurrent_recording_gives_the_same_patterns():
    model = MixedSites().eval()
    x = torch.rand(4, 1, 8, 8)
    want = activation_patterns(model, x)
    results = []
    threads = [threading.Thread(target=lambda: results.append(activation_patterns(model, x)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    for r in results:
        assert r.sites == want.sites and all(torch.equal(a, b) for a, b in zip(r.patterns, want.patterns))


@pytest.mark.parametrize("call,message", [
    (lambda: activation_patterns("model", torch.rand(1, 1, 8, 8)), "nn.Module"),
    (lambda: activation_patterns(MixedSites(), torch.rand(0, 1, 8, 8)), "empty"),
    (lambda: activation_patterns(MixedSites(), torch.full((1, 1, 8, 8), float("nan"))), "NaN"),
    (lambda: pattern_agreement(None, None), "ActivationPatterns"),
    (lambda: pattern_agreement(ActivationPatterns(), ActivationPatterns()), "no ReLU-like site"),
    (lambda: pattern_agreement(activation_patterns(MixedSites(), torch.rand(2, 1, 8, 8)),
                               activation_patterns(MixedSites(), torch.rand(3, 1, 8, 8))), "shapes"),
    (lambda: PathStabilityTracker(torch.rand(2, 1, 8, 8), measure=3), "callable"),
    (lambda: PathStabilityTracker(torch.rand(2, 1, 8, 8)).summary(), "no epoch"),
    (lambda: PathStabilityTracker(torch.rand(2, 1, 8, 8), measure=lambda m, p: float("nan"))
     .record(MixedSites()), "measure returned nan"),
])
def test_bad_inputs_raise_one_line_errors(call, message):
    with pytest.raises(InvalidInputError, match=message) as info:
        call()
    assert "\n" not in str(info.value)
