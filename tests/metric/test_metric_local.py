"""Local residual and epsilon-highway blocks: their defining identities, against a float64 loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pellucid.errors import InvalidInputError
from pellucid.models import create_model
from pellucid.models.metric import EpsilonHighway, LocalMLP, LocalResidual

BLOCKS = [LocalResidual, EpsilonHighway]


def reference(block, x: torch.Tensor) -> torch.Tensor:
    """One sample at a time, float64: d_j = (sum_i |x_i - c_ji|^p)^(1/p), a = softmax(-s [d, eps]);
    residual y = x + sum_j a_j v_j; highway y = sum_j a_j v_j + b + a_eps x."""
    c = block.centres.detach().double()
    v = block.values.detach().double()
    s = math.exp(float(block.similarity.log_scale.detach()))
    eps = float(block.similarity.epsilon)
    out = []
    for row in x.double():
        d = ((row - c).abs() ** block.p).sum(1) ** (1 / block.p)
        a = torch.softmax(-s * torch.cat([d, torch.tensor([eps], dtype=torch.float64)]), 0)
        local = (a[:-1, None] * v).sum(0)
        if isinstance(block, LocalResidual):
            out.append(row + local)
        else:
            out.append(local + block.bias.detach().double() + a[-1] * row)
    return torch.stack(out)


def randomised(cls, seed: int, distance: str = "l2", features: int = 5, hidden: int = 7):
    torch.manual_seed(seed)
    block = cls(features, hidden, distance=distance, epsilon_mode="fixed", epsilon=2.0)
    with torch.no_grad():
        block.values.normal_()
        if hasattr(block, "bias"):
            block.bias.normal_()
        block.similarity.log_scale.fill_(0.3)
    return block


@pytest.mark.parametrize("cls", BLOCKS)
@pytest.mark.parametrize("distance", ["l2", "l1", "l0.5"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_block_matches_the_formula(cls, distance, seed):
    block = randomised(cls, seed, distance).double()
    x = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) / 2
    torch.testing.assert_close(block(x), reference(block, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls", BLOCKS)
def test_epsilon_value_row_stays_exactly_zero_under_training(cls):
    block = randomised(cls, 0)
    block.similarity.mode = "running"  # the epsilon moves too
    opt = torch.optim.Adam(block.parameters(), lr=0.05, weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        x = torch.randn(16, 5, generator=gen)
        loss = (block(x) - x.flip(1)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    full = block.value_matrix()
    assert full.shape == (8, 5) and torch.equal(full[-1], torch.zeros(5))
    assert not torch.equal(full[:-1], randomised(cls, 0).value_matrix()[:-1])  # the rest learned
    # forward is a @ [V; 0] (+ the identity path), the epsilon row included
    block.eval()
    x = torch.randn(4, 5, generator=gen)
    with torch.no_grad():
        a = block.activations(x)
        local = a @ full
        expected = x + local if cls is LocalResidual else local + block.bias + a[:, -1:] * x
        torch.testing.assert_close(block(x), expected, rtol=1e-6, atol=1e-6)
    # no parameter has an epsilon row (H + 1 rows): nothing can move it
    assert all(p.shape[0] != block.hidden + 1 for p in block.parameters() if p.dim() == 2)


@pytest.mark.parametrize("cls", BLOCKS)
def test_far_from_every_centre_the_block_is_the_identity(cls):
    block = randomised(cls, 3).double()
    x = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    far = 1e4 * x / x.norm(dim=1, keepdim=True)  # every centre ~1e4 away, epsilon = 2
    a = block.activations(far)
    assert torch.equal(a[:, -1], torch.ones(4, dtype=torch.float64))
    if cls is LocalResidual:
        assert torch.equal(block(far), far)
    else:
        torch.testing.assert_close(block(far), far + block.bias.detach(), rtol=0, atol=1e-12)
    # at a centre, with a sharp softmax, that centre's value takes over instead
    with torch.no_grad():
        block.similarity.log_scale.fill_(6.0)
    near = block.centres.detach()[:1]
    v0 = block.values.detach()[0]
    expected = near + v0 if cls is LocalResidual else (v0 + block.bias.detach())[None]
    torch.testing.assert_close(block(near), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("cls", BLOCKS)
def test_bad_settings_and_inputs_give_one_line_errors(cls):
    cases = [dict(hidden=0), dict(hidden=-3), dict(hidden=2.5), dict(features=0),
             dict(distance="l0"), dict(distance="cosine"), dict(distance="lp"), dict(distance="l-1"),
             dict(epsilon=float("nan"), epsilon_mode="fixed"), dict(epsilon=-1.0, epsilon_mode="fixed"),
             dict(epsilon_mode="sometimes")]
    for case in cases:
        kwargs = {"features": 4, "hidden": 3, **case}
        with pytest.raises(InvalidInputError) as caught:
            cls(**kwargs)
        assert "\n" not in str(caught.value), case
    block = cls(4, 3)
    for bad in (torch.randn(2, 5), torch.full((2, 4), float("nan")), torch.randn(4)):
        with pytest.raises(InvalidInputError) as caught:
            block(bad)
        assert "\n" not in str(caught.value)


@pytest.mark.parametrize("name", ["local-residual-mlp", "epsilon-highway-mlp"])
def test_local_mlp_stacks_blocks_between_a_projection_and_a_head(name):
    torch.manual_seed(0)
    model = create_model(name, width=16, hidden=6, depth=3, distance="l1")
    assert isinstance(model, LocalMLP) and len(model.blocks) == 3
    assert all(b.p == 1.0 and b.hidden == 6 for b in model.blocks)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    F.cross_entropy(model(x), y).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with pytest.raises(InvalidInputError):
        create_model(name, depth=0)


def test_plain_mlp_has_the_local_mlps_parameter_count():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    plain = count(create_model("plain-mlp"))
    for name in ("local-residual-mlp", "epsilon-highway-mlp"):
        assert abs(count(create_model(name)) - plain) / plain < 0.01
