"""The attack interface on tiny models with known answers: ART backend, AutoAttack, checks."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from pellucid.robust import ATTACKS, evaluate_robustness, within_budget
from pellucid.robust.art_backend import PadBinaryLogits, frozen, numpy_seed
from pellucid.robust.autoattack import Stage
from pellucid.robust.checks import check_black_box, check_gradients, check_monotone, run_checks

TINY_STAGES = (Stage("apgd-ce", {"steps": 10}), Stage("apgd-dlr", {"steps": 10}),
               Stage("deepfool", {"steps": 10}), Stage("square", {"queries": 30}, white_box=False))


class ImageLinear(nn.Module):
    """Logits ``(0, <v, x> + c)`` on 1x8x8 images: the closed-form worst case is known."""

    def __init__(self, seed=0, round_input=False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.v = nn.Parameter(torch.randn(64, generator=g) / 4)
        self.c = nn.Parameter(torch.zeros(()))
        self.round_input = round_input

    def forward(self, x):
        x = x.round() if self.round_input else x  # rounding: zero gradients (masking)
        z = x.flatten(1) @ self.v + self.c
        return torch.stack([torch.zeros_like(z), z], 1)


class Constant(nn.Module):
    """Robust by construction: the same logits whatever the input (gradient exactly zero)."""

    def forward(self, x):
        return torch.tensor([0.3, -0.2]).expand(len(x), 2) + 0 * x.flatten(1).sum(1, keepdim=True)


def _data(n=48, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    return x, (torch.rand(n, generator=g) < 0.5).long()


def _closed_form_robust(model, x, y, eps):
    """Worst case inside the L-inf ball and the [0, 1] box, per image, for ImageLinear."""
    v = model.v.detach()
    sign = torch.where(y == 1, -1.0, 1.0).view(-1, 1)  # class 1 wants z small, class 0 big
    xf = x.flatten(1)
    delta = (sign * eps * v.sign()).clamp(-xf, 1 - xf)  # push each pixel against the margin
    z = (xf + delta) @ v + model.c.detach()
    clean_ok = ((xf @ v + model.c.detach()) > 0).long() == y
    return clean_ok & ((z > 0).long() == y), z


@pytest.mark.parametrize("attack, kwargs", [("pgd", {"steps": 20}), ("apgd-ce", {"steps": 20}),
                                            ("apgd-dlr", {"steps": 20})])
def test_attacks_reach_the_linear_models_closed_form_worst_case(attack, kwargs):
    model, (x, y), eps = ImageLinear(), _data(), 0.15
    expected, z = _closed_form_robust(model, x, y, eps)
    res = evaluate_robustness(model, x, y, attack=attack, eps=eps, **kwargs)
    clear = z.abs() > 1e-3  # skip images whose worst case sits exactly on the boundary
    assert clear.sum() > 30
    assert torch.equal(res.robust[clear], expected[clear])
    assert 0 < float(expected.float().mean()) < float((model(x).argmax(1) == y).float().mean())
    assert within_budget(res.adversarial - x, eps, "linf").all()


@pytest.mark.parametrize("attack, kwargs", [("pgd", {"steps": 5}), ("fgsm", {}),
                                            ("apgd-ce", {"steps": 5}), ("square", {"queries": 20}),
                                            ("square-native", {"queries": 20}),
                                            ("autoattack", {"budget": TINY_STAGES})])
def test_a_model_robust_by_construction_keeps_its_clean_accuracy(attack, kwargs):
    x, y = _data()
    res = evaluate_robustness(Constant(), x, y, attack=attack, eps=0.3, **kwargs)
    assert res.clean_accuracy == float((y == 0).float().mean())
    assert res.robust_accuracy == res.clean_accuracy


def test_autoattack_attacks_only_the_robust_images_and_logs_each_stage():
    model, (x, y), eps = ImageLinear(), _data(), 0.15
    expected, _ = _closed_form_robust(model, x, y, eps)
    res = evaluate_robustness(model, x, y, attack="autoattack", eps=eps, budget=TINY_STAGES)
    assert [s["attack"] for s in res.stages] == ["apgd-ce", "apgd-dlr", "deepfool", "square"]
    clean_ok = int((model(x).argmax(1) == y).sum())
    assert res.stages[0]["attacked"] == clean_ok
    for a, b in zip(res.stages, res.stages[1:]):  # each stage sees what the previous left
        assert b["attacked"] == a["attacked"] - a["broken"]
    assert res.stages[-1]["robust_accuracy_after"] == pytest.approx(res.robust_accuracy)
    assert res.robust_accuracy <= float(expected.float().mean()) + 1e-9 + 1 / len(y)
    assert res.info["budget"] == "custom"


def test_autoattack_scores_unbroken_images_at_their_hardest_point_not_clean():
    # reliability under AutoAttack must see the attacked inputs, also where no stage won
    model, (x, y), eps = ImageLinear(), _data(), 0.05
    res = evaluate_robustness(model, x, y, attack="autoattack", eps=eps, budget=TINY_STAGES)
    z = lambda t: model(t)[:, 1].detach()  # noqa: E731  (class 1 when z > 0)
    signed = torch.where(y == 1, 1.0, -1.0)  # margin of the true class: signed * z
    held = res.robust
    assert held.sum() > 10 and (~held).sum() > 0
    assert within_budget(res.adversarial - x, eps, "linf").all()
    # linear model: every gradient stage moves a robust image toward the boundary
    assert (signed[held] * z(res.adversarial[held]) < signed[held] * z(x[held]) - 1e-4).all()
    assert torch.equal(res.adversarial_logits.argmax(1)[held], y[held])


def test_binary_models_get_a_constant_third_logit_for_dlr():
    x, _ = _data(4)
    z = PadBinaryLogits(ImageLinear())(x)
    assert z.shape == (4, 3) and (z[:, 2] == -100).all()
    assert torch.equal(z[:, :2].argmax(1), ImageLinear()(x).argmax(1))


def test_frozen_restores_grad_flags_and_modes_even_on_errors():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
    model[0].bias.requires_grad_(False)
    model.train()
    with pytest.raises(RuntimeError):
        with frozen(model):
            assert not model.training and not any(p.requires_grad for p in model.parameters())
            raise RuntimeError("boom")
    assert model.training and model[0].weight.requires_grad and not model[0].bias.requires_grad


def test_numpy_seed_is_reproducible_and_leaves_the_global_state_alone():
    np.random.seed(5)
    before = np.random.get_state()[1].copy()
    with numpy_seed(torch.Generator().manual_seed(3)):
        a = np.random.rand(3)
    with numpy_seed(torch.Generator().manual_seed(3)):
        b = np.random.rand(3)
    assert np.array_equal(a, b) and np.array_equal(np.random.get_state()[1], before)


def test_outputs_outside_the_budget_do_not_count_as_broken():
    # DeepFool is unbounded: on a linear model its minimal L2 step usually exceeds a tiny L-inf eps
    model, (x, y) = ImageLinear(), _data()
    res = evaluate_robustness(model, x, y, attack="deepfool", eps=0.01)
    flipped = model(res.adversarial).argmax(1) != y
    assert (flipped & ~res.within_budget).any()  # it flipped some, outside the ball
    expected, _ = _closed_form_robust(model, x, y, 0.01)
    assert res.robust_accuracy >= float(expected.float().mean())


def test_checks_flag_a_model_that_masks_gradients_by_rounding_its_input():
    x, y = _data(64)
    masked = ImageLinear(round_input=True)
    checks = {c.name: c for c in run_checks(masked, x, y, warn=False)}
    assert checks["gradients"].passed is False and checks["gradients"].value == 1.0
    assert checks["unbounded"].passed is False
    honest = {c.name: c for c in run_checks(ImageLinear(), x, y, warn=False)}
    assert honest["gradients"].passed and honest["unbounded"].passed and honest["monotone"].passed
    assert honest["deterministic"].passed and honest["black_box"].passed is None  # no Square run


def test_failed_checks_warn_with_their_names():
    x, y = _data(32)
    with pytest.warns(UserWarning, match="gradients"):
        run_checks(ImageLinear(round_input=True), x, y)


def test_monotone_and_black_box_checks_on_known_inputs():
    up = [{"eps": 0.0, "robust_accuracy": 0.9}, {"eps": 0.1, "robust_accuracy": 0.95}]
    assert check_monotone(up).passed is False and "eps 0.1" in check_monotone(up).detail
    down = [{"eps": 0.0, "robust_accuracy": 0.9}, {"eps": 0.1, "robust_accuracy": 0.9}]
    assert check_monotone(down).passed
    stages = [{"attack": "apgd-ce", "white_box": True, "broken": 5, "robust_accuracy_after": 0.92},
              {"attack": "square", "white_box": False, "broken": 9, "robust_accuracy_after": 0.90}]
    assert check_black_box(stages).passed is False
    stages[1].update(broken=1, robust_accuracy_after=0.919)
    assert check_black_box(stages).passed
    assert check_gradients(Constant(), *_data(8)).passed is False  # constant: zero gradient


def test_black_box_check_counts_only_the_stages_after_the_last_white_box_one():
    # the adaptive cascade: a black-box Square inside the base budget, then white-box stages,
    # then black-box stages that break nothing: the message must not credit them with the 3
    stages = [{"attack": "apgd-ce", "white_box": True, "broken": 5, "robust_accuracy_after": 0.92},
              {"attack": "square-native", "white_box": False, "broken": 3, "robust_accuracy_after": 0.918},
              {"attack": "surrogate-apgd-margin", "white_box": True, "broken": 1, "robust_accuracy_after": 0.9175},
              {"attack": "ray-search", "white_box": False, "broken": 0, "robust_accuracy_after": 0.9175},
              {"attack": "square-final", "white_box": False, "broken": 0, "robust_accuracy_after": 0.9175}]
    check = check_black_box(stages)
    assert check.passed and check.value == 0
    assert check.detail.startswith("ray-search + square-final broke 0 images")
    stages[-1].update(broken=2, robust_accuracy_after=0.9165)
    assert "broke 2 images" in check_black_box(stages).detail


SMALL = {"pgd": {"steps": 2}, "fgsm": {}, "apgd-ce": {"steps": 2}, "apgd-dlr": {"steps": 2},
         "square": {"queries": 5}, "square-native": {"queries": 5}, "deepfool": {"steps": 2}, "boundary": {"steps": 2},
         "autoattack": {"budget": TINY_STAGES},
         "adam-pgd": {"steps": 2}, "l2-bim": {"steps": 2, "norm": "l2"}, "fgm": {"norm": "l2"},
         "apgd-ce-native": {"steps": 2}, "apgd-dlr-native": {"steps": 2}, "apgd-t-native": {"steps": 2},
         "fab-t-native": {"steps": 2}}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_registered_attack_runs_on_a_tiny_model(name):
    assert set(SMALL) == set(ATTACKS)  # a new attack needs an entry here
    x, y = _data(6)
    res = evaluate_robustness(ImageLinear(), x, y, attack=name, eps=0.2, **SMALL[name])
    assert res.adversarial.shape == x.shape and res.n == 6
    assert 0 <= res.robust_accuracy <= res.clean_accuracy
    json.dumps(res.summary())  # JSON-ready


def test_boundary_attack_is_reproducible_from_its_seed(monkeypatch):
    """ART draws each image's start from a fresh, unseeded RandomState: pellucid's start search
    draws from the seeded RNG, so the same seed gives the same images and ART's own never runs."""
    import art.attacks.evasion.boundary as art_boundary

    def unseeded(*args, **kwargs):
        raise AssertionError("ART's unseeded RandomState was used")

    monkeypatch.setattr(art_boundary.np.random, "RandomState", unseeded)
    model = ImageLinear(seed=3)
    x, y = _data(8, seed=5)
    runs = [evaluate_robustness(model, x, y, attack="boundary", steps=5, seed=s) for s in (1, 1, 2)]
    assert torch.equal(runs[0].adversarial, runs[1].adversarial)
    assert not torch.equal(runs[0].adversarial, runs[2].adversarial)
    with torch.no_grad():
        flipped = model(runs[0].adversarial).argmax(1) != model(x).argmax(1)
    assert flipped.all()  # a linear model: a uniform draw of the other class exists for every image


def test_boundary_start_search_keeps_images_it_cannot_start_from():
    """A model that labels every input alike has no adversarial start: each image comes back as
    it was (ART's own search gives up the same way), and the search stops after init_size rounds."""
    from pellucid.robust.art_backend import _seeded_boundary_attack, art_classifier

    calls = []

    class Counting(Constant):
        def forward(self, x):
            calls.append(len(x))
            return super().forward(x)

    model, (x, y) = Counting(), _data(4)
    with art_classifier(model, x, (0.0, 1.0)) as clf, numpy_seed(torch.Generator().manual_seed(0)):
        attack = _seeded_boundary_attack()(clf, targeted=False, max_iter=2, init_size=7, verbose=False)
        starts = attack.random_starts(x.numpy())
        calls.clear()
        out = attack.generate(x.numpy(), y.numpy())
    np.testing.assert_array_equal(starts, x.numpy())
    np.testing.assert_array_equal(out, x.numpy())
    # batched predictions only: ART's of x and of the starts, the search's of x and its 7 rounds,
    # ART's success rate (x and the result); ART's own search would predict one image at a time
    assert calls == [4] * 12, calls
