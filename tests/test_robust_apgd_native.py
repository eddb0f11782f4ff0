"""pellucid's own AutoAttack components (apgd-ce-native, apgd-dlr-native, apgd-t-native) and the
"native" budget, on tiny seeded models with known answers."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from pellucid.errors import ConfigError, InvalidInputError
from pellucid.robust import ATTACKS, run_attack, within_budget
from pellucid.robust.apgd_attacks import (apgd_ce_native, apgd_dlr_native, apgd_t_native, dlr_loss,
                                          target_classes, targeted_dlr_loss)
from pellucid.robust.autoattack import autoattack
from pellucid.robust.budgets import BUDGETS

from test_robust_art import ImageLinear, _closed_form_robust, _data

NATIVE = ("apgd-ce-native", "apgd-dlr-native", "apgd-t-native")


class MLP(nn.Module):
    """A seeded ``K``-class MLP on 1x8x8 images."""

    def __init__(self, k=10, seed=0):
        super().__init__()
        torch.manual_seed(seed)  # nn's initialisers draw from the global generator
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, k))

    def forward(self, x):
        return self.net(x) * 4


class Counting(nn.Module):
    """Counts forward passes: an error raised "before any work" leaves it at 0."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


def _images(n, seed=3, dtype=torch.float32):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _correct(model, n=40, seed=3, dtype=torch.float32):
    """Images and the model's own predictions as labels: every image starts correct."""
    x = _images(n, seed, dtype)
    with torch.no_grad():
        return x, model(x).argmax(1)


# --- the losses against slow per-image references ----------------------------------------------

def _dlr_reference(z, y):
    out = []
    for row, label in zip(z.tolist(), y.tolist()):
        other = max(v for i, v in enumerate(row) if i != label)
        if len(row) < 3:
            out.append(-(row[label] - other))
            continue
        s = sorted(row, reverse=True)
        out.append(-(row[label] - other) / (s[0] - s[2] + 1e-12))
    return torch.tensor(out, dtype=torch.float64)


def _targeted_reference(z, y, t):
    out = []
    for row, label, target in zip(z.tolist(), y.tolist(), t.tolist()):
        if len(row) < 4:
            out.append(row[target] - row[label])
            continue
        s = sorted(row, reverse=True)
        out.append(-(row[label] - row[target]) / (s[0] - (s[2] + s[3]) / 2 + 1e-12))
    return torch.tensor(out, dtype=torch.float64)


def _targets_reference(z, y, n):
    out = []
    for row, label in zip(z.tolist(), y.tolist()):
        order = sorted((i for i in range(len(row)) if i != label), key=lambda i: -row[i])
        out.append(order[:min(n, len(row) - 1)])
    return torch.tensor(out)


@pytest.mark.parametrize("k", [2, 3, 4, 10])
def test_dlr_losses_match_a_per_image_reference(k):
    g = torch.Generator().manual_seed(k)
    z = torch.randn(50, k, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, k, (50,), generator=g)
    t = (y + torch.randint(1, k, (50,), generator=g)) % k  # any class but y
    torch.testing.assert_close(dlr_loss(z, y), _dlr_reference(z, y), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(targeted_dlr_loss(z, y, t), _targeted_reference(z, y, t),
                               rtol=1e-12, atol=1e-12)
    if k == 2:  # two classes: DLR is the margin loss, the targeted one too
        margin = z.gather(1, y[:, None]).squeeze(1) - z.gather(1, (1 - y)[:, None]).squeeze(1)
        torch.testing.assert_close(dlr_loss(z, y), -margin)
        torch.testing.assert_close(targeted_dlr_loss(z, y, 1 - y), -margin)


def test_dlr_is_scale_and_shift_invariant_and_its_gradient_flows():
    z = torch.randn(8, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.arange(8) % 10
    torch.testing.assert_close(dlr_loss(3 * z + 7, y), dlr_loss(z, y))
    torch.testing.assert_close(targeted_dlr_loss(3 * z + 7, y, (y + 1) % 10),
                               targeted_dlr_loss(z, y, (y + 1) % 10))
    z.requires_grad_(True)
    (grad,) = torch.autograd.grad(dlr_loss(z, y).sum(), z)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("k, n", [(10, 9), (10, 3), (4, 9), (2, 9)])
def test_target_classes_are_the_highest_non_true_clean_logits(k, n):
    g = torch.Generator().manual_seed(k + n)
    z = torch.randn(30, k, generator=g)
    y = torch.randint(0, k, (30,), generator=g)
    assert torch.equal(target_classes(z, y, n), _targets_reference(z, y, n))


def test_apgd_t_runs_the_targets_in_order_on_the_clean_points(monkeypatch):
    import pellucid.robust.apgd_attacks as module

    model = MLP()
    x, y = _correct(model, 12)
    seen = []
    original = module.targeted_dlr_loss

    def spy(z, labels, target):
        seen.append((labels.clone(), target.clone()))
        return original(z, labels, target)

    monkeypatch.setattr(module, "targeted_dlr_loss", spy)
    # eps 0: nothing can be broken, so every target run sees every image, once (1 step)
    run = apgd_t_native(model, x, y, eps=0.0, steps=1, n_target_classes=4)
    with torch.no_grad():
        expected = _targets_reference(model(x), y, 4)
    assert len(seen) == 4
    for rank, (labels, target) in enumerate(seen):
        assert torch.equal(labels, y) and torch.equal(target, expected[:, rank])
    assert torch.equal(run.adversarial, x)
    assert run.stages[0]["broken_per_target"] == {"1": 0, "2": 0, "3": 0, "4": 0}


# --- the attacks' contract ---------------------------------------------------------------------

@pytest.mark.parametrize("name", NATIVE)
@pytest.mark.parametrize("value_range", [(0.0, 1.0), (-0.5, 1.5)])
def test_outputs_stay_inside_the_ball_and_the_value_range(name, value_range):
    model = MLP()
    x, y = _correct(model, 30)
    x = x * (value_range[1] - value_range[0]) + value_range[0]
    with torch.no_grad():
        y = model(x).argmax(1)
    eps = 0.1
    out = run_attack(name, model, x, y, eps=eps, steps=20, value_range=value_range,
                     generator=torch.Generator().manual_seed(0)).adversarial
    assert out.shape == x.shape and out.dtype == x.dtype
    assert bool(within_budget(out - x, eps, "linf").all())
    assert float((out - x).abs().max()) <= eps + 1e-6
    assert float(out.min()) >= value_range[0] and float(out.max()) <= value_range[1]
    with torch.no_grad():
        assert bool((model(out).argmax(1) != y).any())  # eps 0.1 breaks some of this MLP's images


@pytest.mark.parametrize("name", NATIVE)
def test_a_linear_model_reaches_its_closed_form_worst_case(name):
    """ImageLinear (two classes, logits (0, <v, x> + c)) in the [0, 1] box: the worst case per
    image is known (test_robust_art); every native attack must find exactly the broken images."""
    model, (x, y), eps = ImageLinear(), _data(), 0.15
    expected, z = _closed_form_robust(model, x, y, eps)
    out = run_attack(name, model, x, y, eps=eps, steps=20,
                     generator=torch.Generator().manual_seed(0)).adversarial
    with torch.no_grad():
        clean_ok = model(x).argmax(1) == y
        robust = clean_ok & (model(out).argmax(1) == y)
    clear = z.abs() > 1e-3  # skip images whose worst case sits exactly on the boundary
    assert clear.sum() > 30 and 0 < int(expected.sum()) < int(clean_ok.sum())
    assert torch.equal(robust[clear], expected[clear])


class Affine2(nn.Module):
    """Logits ``(0, <w, x> + b)``: margin ``|<w, x> + b|``, broken in the L-inf ball (no box)
    exactly when ``eps ||w||_1`` exceeds it."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.w = nn.Parameter(torch.randn(64, generator=g))
        self.b = nn.Parameter(torch.tensor(0.2))

    def forward(self, x):
        s = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(s), s], 1)


@pytest.mark.parametrize("name", NATIVE)
def test_a_linear_model_is_broken_exactly_where_eps_exceeds_margin_over_l1_norm(name):
    model = Affine2()
    x = _images(64, seed=7) * 2 - 1
    with torch.no_grad():
        y = model(x).argmax(1)
        needed = (x.flatten(1) @ model.w + model.b).abs() / model.w.abs().sum()  # margin / ||w||_1
    wide = (-100.0, 100.0)  # the box never binds: the closed form is margin / ||w||_1
    eps = float(needed.median())
    out = run_attack(name, model, x, y, eps=eps, steps=10, value_range=wide,
                     generator=torch.Generator().manual_seed(0)).adversarial
    with torch.no_grad():
        broken = model(out).argmax(1) != y
    clear = (needed - eps).abs() > 0.02 * eps
    assert clear.sum() > 50
    assert torch.equal(broken[clear], (needed < eps)[clear])
    assert bool(within_budget(out - x, eps, "linf").all())


@pytest.mark.parametrize("name", NATIVE)
def test_the_same_seed_gives_the_same_outputs(name):
    model = MLP()
    x, y = _correct(model, 24)
    runs = [run_attack(name, model, x, y, eps=0.05, steps=15, restarts=2,
                       generator=torch.Generator().manual_seed(seed)).adversarial
            for seed in (4, 4, 5)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])  # the start is drawn from the generator


@pytest.mark.parametrize("name", NATIVE)
def test_float64_and_already_misclassified_images(name):
    model = MLP().double()
    x = _images(16).double()
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:4] = (y[:4] + 1) % 10  # wrong labels: broken already, returned unchanged
    out = run_attack(name, model, x, y, eps=0.05, steps=10,
                     generator=torch.Generator().manual_seed(0)).adversarial
    assert out.dtype == torch.float64 and torch.equal(out[:4], x[:4])
    assert bool(within_budget(out - x, 0.05, "linf").all())


# --- bad inputs --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NATIVE + ("fab-t-native",))
def test_another_norm_is_a_one_line_config_error_before_any_attack_step(name):
    x, y = _correct(MLP(), 4)
    # the function itself checks before any forward pass; through the registry the only forward
    # pass is the registry's check of the inputs (one image), as for every attack
    for call, passes in ((ATTACKS.get(name).function, 0), (lambda *a, **k: run_attack(name, *a, **k), 1)):
        model = Counting(MLP())
        with pytest.raises(ConfigError) as err:
            call(model, x, y, eps=0.1, norm="l2")
        msg = str(err.value)
        assert "\n" not in msg and name in msg and "'l2'" in msg and "linf" in msg, msg
        assert model.calls == passes


@pytest.mark.parametrize("name, option, value, needle", [
    ("apgd-ce-native", "steps", 0, ">= 1"), ("apgd-dlr-native", "restarts", 0, ">= 1"),
    ("apgd-t-native", "steps", 0, ">= 1"), ("apgd-t-native", "n_target_classes", 0, ">= 1"),
    ("apgd-t-native", "n_target_classes", 2.5, "an int"), ("apgd-ce-native", "step_size", 0.1, "no option"),
    ("fab-t-native", "steps", 0, ">= 1"), ("fab-t-native", "restarts", 0, ">= 1"),
    ("fab-t-native", "n_target_classes", 0, ">= 1"), ("fab-t-native", "n_target_classes", 2.5, "an int"),
    ("fab-t-native", "alpha_max", 1.5, "<= 1"), ("fab-t-native", "alpha_max", -0.1, ">= 0"),
    ("fab-t-native", "eta", 0.9, ">= 1"), ("fab-t-native", "beta", 0.0, "> 0"),
    ("fab-t-native", "beta", float("nan"), "finite"), ("fab-t-native", "step_size", 0.1, "no option"),
])
def test_a_bad_option_raises_naming_the_attack_and_the_option(name, option, value, needle):
    model = Counting(MLP())
    x, y = _correct(MLP(), 4)
    with pytest.raises(InvalidInputError) as err:
        run_attack(name, model, x, y, eps=0.1, **{option: value})
    msg = str(err.value)
    assert name in msg and option in msg and needle in msg and "\n" not in msg, msg
    assert model.calls == 0
    if needle != "no option":  # the direct call checks its options too
        with pytest.raises(ConfigError, match=f"{name}: {option}"):
            ATTACKS.get(name).function(model, x, y, eps=0.1, **{option: value})
        assert model.calls == 0


@pytest.mark.parametrize("name", NATIVE)
@pytest.mark.parametrize("eps", [float("nan"), -0.1, "0.1", float("inf")])
def test_a_bad_eps_raises_before_any_work(name, eps):
    x, y = _correct(MLP(), 4)
    for call in (ATTACKS.get(name).function, lambda *a, **k: run_attack(name, *a, **k)):
        model = Counting(MLP())
        with pytest.raises(InvalidInputError, match="eps") as err:
            call(model, x, y, eps=eps)
        assert "\n" not in str(err.value), str(err.value)
        assert model.calls <= 1  # at most the registry's check of the inputs, no attack step


@pytest.mark.parametrize("function", [apgd_ce_native, apgd_dlr_native, apgd_t_native])
def test_an_empty_batch_gives_an_empty_result(function):
    model = Counting(MLP())
    x, y = torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)
    out = function(model, x, y, eps=0.1)
    out = getattr(out, "adversarial", out)
    assert out.shape == (0, 1, 8, 8) and model.calls == 0


# --- the native budget -------------------------------------------------------------------------

def test_the_native_budget_lists_pellucids_own_components_and_keeps_the_others():
    native = BUDGETS["native"]
    assert [(s.attack, s.kwargs, s.white_box) for s in native] == [
        ("apgd-ce-native", {"steps": 100, "restarts": 1}, True),
        ("apgd-t-native", {"steps": 100, "restarts": 1, "n_target_classes": 9}, True),
        ("square-native", {"queries": 5000, "restarts": 1}, False)]
    assert [s.attack for s in BUDGETS["standard"]] == ["apgd-ce", "apgd-dlr", "deepfool", "square"]
    assert [s.attack for s in BUDGETS["standard-native"]][-1] == "square-native"
    for stage in native:
        ATTACKS.get(stage.attack).check_options(stage.kwargs)


def check_budget_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, budget: str,
                     attacks: list[str]) -> None:
    """``budget`` runs its ``attacks`` in order, each on the images the earlier ones left standing;
    the result is inside the eps-ball and [0, 1], and the stages' broken counts are exactly the
    images a plain forward pass now misclassifies (some, not all)."""
    run = autoattack(model, x, y, eps=eps, budget=budget, generator=torch.Generator().manual_seed(0))
    assert run.info == {"budget": budget}
    assert [row["attack"] for row in run.stages] == attacks
    assert run.stages[0]["attacked"] == len(x)
    for before, after in zip(run.stages, run.stages[1:]):
        assert after["attacked"] == before["attacked"] - before["broken"]
    assert bool(within_budget(run.adversarial - x, eps, "linf").all())
    assert float(run.adversarial.min()) >= 0 and float(run.adversarial.max()) <= 1
    with torch.no_grad():
        robust = model(run.adversarial).argmax(1) == y
    broken = sum(row["broken"] for row in run.stages)
    assert 0 < broken < len(x) and int((~robust).sum()) == broken


def test_the_native_budget_runs_end_to_end():
    model = MLP(seed=1)
    x, y = _correct(model, 16, seed=9)
    # eps 0.2: PGD-40 breaks half of these images
    check_budget_run(model, x, y, 0.2, "native", ["apgd-ce-native", "apgd-t-native", "square-native"])


def test_the_cli_lists_the_native_attacks_and_budget(monkeypatch, capsys):
    from pellucid.cli.main import build_parser

    monkeypatch.setenv("COLUMNS", "100000")
    with pytest.raises(SystemExit):
        build_parser(["evaluate"]).parse_args(["evaluate", "--help"])
    text = capsys.readouterr().out
    for name in NATIVE:
        assert f"{name}: " in text
    assert "native = pellucid's own" in text
    flag = re.search(r"--n-target-classes INT\s+([^\n]*)", text)
    assert flag and "(default 9); applies to apgd-t-native" in flag.group(1), flag
