"""pellucid.train.optim.Adam and SGD against torch.optim.Adam and SGD, bit for bit."""

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from pellucid.models import whitebox_mnist35
from pellucid.nn import project_constraints_
from pellucid.train.optim import SGD, Adam


def _batches(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.rand(16, 1, 28, 28, generator=gen), torch.randint(0, 2, (16,), generator=gen))
            for _ in range(n)]


def _train(model, opt, batches):
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        project_constraints_(model)


def _assert_same_params(a, b):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("weight_decay", [0.0, 3e-6])
def test_adam_matches_torch_adam_bit_for_bit(weight_decay):
    torch.manual_seed(0)
    ours = whitebox_mnist35().train()
    theirs = copy.deepcopy(ours)
    batches = _batches(6)
    _train(ours, Adam(ours.parameters(), lr=3e-3, weight_decay=weight_decay), batches)
    _train(theirs, torch.optim.Adam(theirs.parameters(), lr=3e-3, weight_decay=weight_decay), batches)
    _assert_same_params(ours, theirs)
    assert not all(torch.equal(p, q) for p, q in zip(ours.parameters(), whitebox_mnist35().parameters()))


def test_parameters_without_gradient_are_skipped_like_torch():
    w = torch.nn.Parameter(torch.randn(5))
    unused = torch.nn.Parameter(torch.randn(3))
    w2, unused2 = (torch.nn.Parameter(t.detach().clone()) for t in (w, unused))
    ours, theirs = Adam([w, unused], lr=0.1), torch.optim.Adam([w2, unused2], lr=0.1)
    for opt, p in ((ours, w), (theirs, w2)):
        for _ in range(3):
            opt.zero_grad()
            (p ** 3).sum().backward()
            opt.step()
    assert torch.equal(w, w2) and torch.equal(unused, unused2)
    assert set(ours.state) == {0} and set(ours.state_dict()["state"]) == set(theirs.state_dict()["state"])


def test_state_dict_round_trips_and_crosses_over_to_torch():
    torch.manual_seed(1)
    base = whitebox_mnist35().train()
    first, second = _batches(3, seed=1), _batches(3, seed=2)

    straight = copy.deepcopy(base)
    opt = Adam(straight.parameters(), lr=3e-3, weight_decay=3e-6)
    _train(straight, opt, first + second)

    # torch trains the first half; ours resumes from torch's state dict (an older checkpoint)
    torch_half = copy.deepcopy(base)
    topt = torch.optim.Adam(torch_half.parameters(), lr=3e-3, weight_decay=3e-6)
    _train(torch_half, topt, first)
    resumed = copy.deepcopy(torch_half)
    ropt = Adam(resumed.parameters(), lr=1.0)  # hyperparameters come from the state dict
    ropt.load_state_dict(copy.deepcopy(topt.state_dict()))
    assert ropt.param_groups[0]["lr"] == 3e-3
    _train(resumed, ropt, second)
    _assert_same_params(resumed, straight)

    # and ours -> ours, and ours -> torch
    back = torch.optim.Adam(copy.deepcopy(resumed).parameters())
    back.load_state_dict(ropt.state_dict())
    again = Adam(resumed.parameters())
    again.load_state_dict(ropt.state_dict())
    for i, s in again.state.items():
        assert all(torch.equal(s[k], ropt.state[i][k]) for k in s)
        assert all(torch.equal(back.state_dict()["state"][i][k], ropt.state[i][k]) for k in s)


def test_bad_settings_and_mismatched_state_are_refused():
    p = torch.nn.Parameter(torch.zeros(2))
    for kwargs in ({"lr": -1}, {"eps": -1e-8}, {"betas": (1.0, 0.9)}, {"weight_decay": -1}):
        with pytest.raises(ValueError):
            Adam([p], **kwargs)
    with pytest.raises(ValueError, match="empty"):
        Adam([])
    opt = Adam([p])
    sd = Adam([p, torch.nn.Parameter(torch.zeros(3))]).state_dict()
    with pytest.raises(ValueError, match="parameters"):
        opt.load_state_dict(sd)
    amsgrad = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], amsgrad=True).state_dict()
    with pytest.raises(ValueError, match="amsgrad"):
        opt.load_state_dict(amsgrad)
    wrong = {"state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(3),
                           "exp_avg_sq": torch.zeros(3)}}, "param_groups": opt.state_dict()["param_groups"]}
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(wrong)


def test_a_training_run_never_imports_torch_dynamo(tmp_path):
    """The point of this Adam: a plain training run does not pay for importing the compiler."""
    code = f"""
import sys
from pellucid.cli.main import main
assert main(["train", "whitebox-mnist35", "--out", {str(tmp_path / 'run')!r}, "--epochs", "1",
             "--val-size", "11400", "--val-pgd-steps", "1", "--no-progress"]) == 0
loaded = sorted(m for m in sys.modules if m.startswith("torch._dynamo"))
assert not loaded, loaded[:5]
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("momentum,weight_decay", [(0.9, 5e-4), (0.0, 0.0), (0.5, 0.0)])
def test_sgd_matches_torch_sgd_bit_for_bit(momentum, weight_decay):
    torch.manual_seed(0)
    ours_model = whitebox_mnist35()
    theirs_model = copy.deepcopy(ours_model)
    batches = _batches(4)
    _train(ours_model, SGD(ours_model.parameters(), lr=0.05, momentum=momentum, weight_decay=weight_decay),
           batches)
    _train(theirs_model, torch.optim.SGD(theirs_model.parameters(), lr=0.05, momentum=momentum,
                                         weight_decay=weight_decay), batches)
    for a, b in zip(ours_model.state_dict().values(), theirs_model.state_dict().values()):
        assert torch.equal(a, b)


def test_sgd_state_dict_moves_between_torch_and_pellucid():
    torch.manual_seed(1)
    model = whitebox_mnist35()
    batches = _batches(3, seed=2)
    ours = SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    _train(model, ours, batches[:2])
    twin = copy.deepcopy(model)
    theirs = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    theirs.load_state_dict(copy.deepcopy(ours.state_dict()))  # ours -> torch (as through a file)
    _train(model, ours, batches[2:])
    _train(twin, theirs, batches[2:])
    for a, b in zip(model.state_dict().values(), twin.state_dict().values()):
        assert torch.equal(a, b)
    back = SGD(copy.deepcopy(model).parameters(), lr=1.0)
    back.load_state_dict(theirs.state_dict())  # torch -> ours, settings included
    assert back.param_groups[0]["lr"] == 0.05 and back.param_groups[0]["momentum"] == 0.9
    for i, st in theirs.state_dict()["state"].items():
        assert torch.equal(back.state[i]["momentum_buffer"], st["momentum_buffer"])


def test_sgd_refuses_bad_settings_and_foreign_states():
    p = torch.nn.Parameter(torch.zeros(3))
    for kwargs in ({"lr": -1.0}, {"lr": float("nan")}, {"momentum": 1.0}, {"momentum": -0.1},
                   {"weight_decay": -1.0}):
        with pytest.raises(ValueError):
            SGD([p], **kwargs)
    with pytest.raises(ValueError, match="empty"):
        SGD([])
    nesterov = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1, momentum=0.9,
                               nesterov=True).state_dict()
    with pytest.raises(ValueError, match="nesterov"):
        SGD([p]).load_state_dict(nesterov)
    with pytest.raises(ValueError, match="not SGD's"):
        SGD([p]).load_state_dict(Adam([p]).state_dict())
    with pytest.raises(ValueError, match="not Adam's"):
        Adam([p]).load_state_dict(SGD([p]).state_dict())
