"""Issue 22, item 5: the rejection protocol of "Metric as Transform" completed: the full attack list
(FGM, Adam-PGD, L2 BIM beside FGSM and PGD), the (alpha, bound) grid of one search attacking once per
epsilon, and the softmax baseline at the same clean rejection rate."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pellucid.robust.rejection as rejection
from pellucid.errors import InvalidInputError
from pellucid.models.metric import PlainMLP
from pellucid.robust import ATTACKS, run_attack, within_budget
from pellucid.robust.attacks import adam_pgd, fgm, l2_bim, pgd
from pellucid.robust.rejection import (MaxProbabilityRejector, rejection_at_clean_rates, rejection_counts,
                                       rejection_search, shifted_along_attack, temporary_epsilon,
                                       threshold_at_clean_rate)

from test_metric_models import synthetic_images, train_tiny_dictionary


def tiny_classifier(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 3)).to(dtype).eval()


def tiny_batch(n=24, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 8, 8, generator=g, dtype=dtype)
    return x, torch.randint(0, 3, (n,), generator=g)


def loss_sum(model, x, y):
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y, reduction="sum"))


# ------------------------------------------------------------------------------------------ attacks

@pytest.mark.parametrize("name,kwargs", [
    ("fgsm", {"eps": 0.1}), ("fgm", {"eps": 0.8}),
    ("pgd", {"eps": 0.1, "steps": 5, "step_size": 0.03}),
    ("pgd", {"eps": 0.8, "steps": 5, "step_size": 0.3, "norm": "l2"}),
    ("adam-pgd", {"eps": 0.1, "steps": 5, "step_size": 0.03}),
    ("adam-pgd", {"eps": 0.8, "steps": 5, "step_size": 0.03, "norm": "l2"}),
    ("l2-bim", {"eps": 0.8, "steps": 5}),
])
def test_each_protocol_attack_stays_in_its_ball_and_range_and_raises_the_loss(name, kwargs):
    model, (x, y) = tiny_classifier(), tiny_batch()
    norm = kwargs.get("norm", "l2" if name in ("fgm", "l2-bim") else "linf")
    adv = run_attack(name, model, x, y, generator=torch.Generator().manual_seed(0), **kwargs).adversarial
    assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1
    assert within_budget(adv - x, kwargs["eps"], norm).all()
    assert loss_sum(model, adv, y) > loss_sum(model, x, y)
    assert name in ATTACKS and ATTACKS.get(name).function.__doc__  # registered, with its formula


def _grad_one(model, xi, yi):
    """The cross-entropy gradient of one image, alone (the slow references' building block)."""
    xi = xi.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xi[None]), yi[None]), xi)
    return g


def test_fgm_is_one_l2_step_of_length_eps_like_a_slow_reference():
    model, (x, y) = tiny_classifier(torch.float64), tiny_batch(dtype=torch.float64)
    eps = 0.7
    expected = torch.stack([(xi + eps * g / g.norm()).clamp(0, 1)
                            for xi, yi in zip(x, y) for g in [_grad_one(model, xi, yi)]])
    torch.testing.assert_close(fgm(model, x, y, eps=eps, batch_size=7), expected, rtol=0, atol=1e-12)
    inner = torch.full((4, 1, 8, 8), 0.5, dtype=torch.float64)  # no clipping: the step is exactly eps long
    step = fgm(model, inner, y[:4], eps=0.1) - inner
    torch.testing.assert_close(step.flatten(1).norm(dim=1), torch.full((4,), 0.1, dtype=torch.float64))


def test_l2_bim_is_l2_pgd_without_random_start():
    model, (x, y) = tiny_classifier(), tiny_batch()
    same = dict(eps=0.8, steps=6, step_size=0.2, norm="l2", random_start=False)
    assert torch.equal(l2_bim(model, x, y, eps=0.8, steps=6, step_size=0.2), pgd(model, x, y, **same))
    # its defaults: foolbox's 10 steps of eps / 5
    assert torch.equal(l2_bim(model, x, y, eps=0.8), pgd(model, x, y, **{**same, "steps": 10, "step_size": 0.16}))


@pytest.mark.parametrize("norm,eps", [("linf", 0.15), ("l2", 1.2)])
def test_adam_pgd_matches_a_slow_reference_and_its_first_step_is_about_alpha_sign_g(norm, eps):
    model, (x, y) = tiny_classifier(torch.float64), tiny_batch(dtype=torch.float64)
    alpha, steps, (b1, b2) = 0.04, 3, (0.9, 0.999)
    expected = []
    for xi, yi in zip(x, y):  # per image, Adam written out
        xa, m, v = xi.clone(), torch.zeros_like(xi), torch.zeros_like(xi)
        for t in range(1, steps + 1):
            g = _grad_one(model, xa, yi)
            n = g.sign() if norm == "linf" else g / g.norm()
            m, v = b1 * m + (1 - b1) * n, b2 * v + (1 - b2) * n ** 2
            xa = xa + alpha * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + 1e-8)
            delta = xa - xi
            delta = delta.clamp(-eps, eps) if norm == "linf" else delta * min(1.0, eps / float(delta.norm()))
            xa = (xi + delta).clamp(0, 1)
        expected.append(xa)
    out = adam_pgd(model, x, y, eps=eps, steps=steps, step_size=alpha, norm=norm, random_start=False,
                   batch_size=5)  # moments are per image: batching changes nothing
    torch.testing.assert_close(out, torch.stack(expected), rtol=0, atol=1e-10)
    # the first step: alpha n / (|n| + 1e-8), i.e. alpha sign(g) in both norms (then the projection)
    inner = torch.full_like(x, 0.5)
    first = adam_pgd(model, inner, y, eps=10.0, steps=1, step_size=0.01, norm=norm, random_start=False)
    g = torch.stack([_grad_one(model, xi, yi) for xi, yi in zip(inner, y)])
    assert torch.equal((first - inner).sign(), g.sign())
    torch.testing.assert_close(first - inner, 0.01 * g.sign(), rtol=0, atol=1e-5)  # 1e-8 / |n| off


def test_new_attacks_refuse_what_they_cannot_do_before_any_work():
    model, (x, y) = tiny_classifier(), tiny_batch(4)
    cases = [(lambda: fgm(model, x, y, eps=0.1, norm="linf"), "fgm is an L2 attack"),
             (lambda: l2_bim(model, x, y, eps=0.1, norm="linf"), "l2-bim is an L2 attack"),
             (lambda: fgm(model, x, y, eps=math.inf), "finite"),
             (lambda: adam_pgd(model, x, y, eps=math.inf), "explicit step_size"),
             (lambda: adam_pgd(model, x, y, eps=0.1, norm="l1"), "'linf' or 'l2'"),
             (lambda: adam_pgd(model, x, y, eps=0.1, steps=0), "adam-pgd: steps"),
             (lambda: run_attack("l2-bim", model, x, y, eps=0.1, random_start=False), "no option 'random_start'"),
             (lambda: fgm(model, x, y, eps=-1.0), "eps must be a number >= 0")]
    for call, needle in cases:
        with pytest.raises(InvalidInputError) as err:
            call()
        assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)


# -------------------------------------------------------------------- the (alpha, bound) grid

@pytest.fixture(scope="module")
def dictionary():
    model, _, _ = train_tiny_dictionary()
    x, y = synthetic_images(n_per_class=12, seed=3)
    return model, x, y


def _counting(monkeypatch):
    """Count the search's attack runs and the epsilon of each."""
    at: list[float] = []
    real = rejection.run_attack

    def counted(name, model, *args, **kwargs):
        at.append(float(model.epsilon))
        return real(name, model, *args, **kwargs)

    monkeypatch.setattr(rejection, "run_attack", counted)
    return at


def test_one_search_covers_every_alpha_and_bound_attacking_once_per_epsilon(dictionary, monkeypatch):
    model, x, y = dictionary
    kw = dict(attack="fgsm", attack_kwargs={"eps": 0.1}, noise_samples=50)
    grid = (0.5, 0.8, 1.0, 1.2, 1.5)
    at = _counting(monkeypatch)
    coarse = rejection_search(model, x, y, alphas=(0.5, 1, 3, 9, 20), bounds=(1, 10), refinements=0,
                              relative_grid=grid, **kw)
    assert len(at) == len(grid) == coarse["attack_runs"]  # 10 cells, one attack per epsilon
    assert set(coarse["bounds"]) == {"1.0", "10.0"}
    assert all(set(c) == {"0.5", "1.0", "3.0", "9.0", "20.0"} for c in coarse["bounds"].values())
    at.clear()
    one_bound = rejection_search(model, x, y, alphas=(0.5, 1, 3, 9, 20), bounds=(1,), refinements=0,
                                 relative_grid=grid, **kw)
    assert len(at) == len(grid)  # adding b = 10 above cost no attack
    assert one_bound["bounds"]["1.0"] == coarse["bounds"]["1.0"]
    at.clear()
    full = rejection_search(model, x, y, alphas=(1, 9, 20), bounds=(1, 10), refinements=2,
                            relative_grid=grid, refine_points=3, **kw)
    assert len(at) == len(set(at)) == full["attack_runs"]  # refinements too: never twice at one epsilon
    tried = sum(r["epsilons_tried"] for c in full["bounds"].values() for r in c.values())
    assert len(grid) < len(at) < tried
    train_eps = coarse["bounds"]["1.0"]["1.0"]["trained_epsilon"]
    assert model.epsilon == train_eps  # restored
    # a b = 10 cell is the counts of the clipped shift at its epsilon
    cell = full["bounds"]["10.0"]["20.0"]
    assert (cell["alpha"], cell["bound"], cell["trained_epsilon"]) == (20.0, 10.0, train_eps)
    with temporary_epsilon(model):
        model.set_epsilon(cell["epsilon"])
        adv = run_attack("fgsm", model, x, y, eps=0.1).adversarial
        direct = rejection_counts(model, x, y, shifted_along_attack(x, adv, 20.0, 10.0))
    assert direct.summary().items() <= cell.items()


def test_bound_10_lets_the_shift_leave_the_image_range_that_bound_1_clips():
    x = torch.full((2, 1, 4, 4), 0.5)
    xa = x.clone()
    xa[:, :, 0, 0] = 0.9
    wide, clipped = shifted_along_attack(x, xa, 20.0, 10.0), shifted_along_attack(x, xa, 20.0, 1.0)
    # along -g = x_attacked - x: internal 0 + 20 -> clipped to 10 (image 5.5) or to 1 (image 1)
    assert float(wide.max()) == 5.5 and float(clipped.max()) == 1.0


# ----------------------------------------------------------------------------- softmax baseline

def _slow_threshold(conf: list[float], rate: float) -> float:
    """The largest candidate (a confidence, or just above the largest) rejecting at most k."""
    k = round(rate * len(conf))
    top = float(torch.nextafter(torch.tensor(max(conf)), torch.tensor(math.inf)))
    best = None
    for t in sorted(set(conf)) + [top]:
        if sum(c < t for c in conf) <= k:
            best = t
    return best


def test_threshold_at_clean_rate_matches_a_slow_reference_with_and_without_ties():
    g = torch.Generator().manual_seed(0)
    distinct = torch.rand(50, generator=g)
    tied = torch.randint(0, 6, (50,), generator=g).float() / 5
    for conf in (distinct, tied):
        values = conf.tolist()
        for rate in (0.0, 0.02, 0.1, 0.33, 0.5, 0.9, 0.98, 1.0):
            tau = threshold_at_clean_rate(conf, rate)
            assert tau == _slow_threshold(values, rate), (rate, tau)
            if conf is distinct:
                assert int((conf < tau).sum()) == round(rate * 50)
    assert threshold_at_clean_rate(distinct, 1.0) > float(distinct.max())  # finite, rejects all
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(InvalidInputError, match="rate must be in"):
            threshold_at_clean_rate(distinct, bad)
    with pytest.raises(InvalidInputError, match="non-empty 1-D"):
        threshold_at_clean_rate(torch.zeros(0), 0.5)


def _plain():
    torch.manual_seed(0)
    return PlainMLP(784, 16, 1, 3).eval()


def test_max_probability_rejector_thresholds_the_softmax_and_restores_tau():
    x, _ = synthetic_images(n_per_class=5, seed=2)
    rejector = MaxProbabilityRejector(_plain(), tau=0.4)
    p = torch.softmax(rejector.classifier(x), 1).amax(1)
    torch.testing.assert_close(rejector.confidence(x), p)
    assert torch.equal(rejector.rejects(x), p < 0.4) and rejector.epsilon == 0.4
    assert torch.equal(rejector(x), rejector.classifier(x))  # logits ignore tau
    with temporary_epsilon(rejector):
        rejector.set_epsilon(2.0)
        assert bool(rejector.rejects(x).all())
    assert rejector.epsilon == 0.4
    with pytest.raises(InvalidInputError, match="tau must be a number"):
        rejector.set_epsilon(float("nan"))


def test_baseline_is_counted_at_the_searched_models_clean_rejection_rates(dictionary, monkeypatch):
    model, x, y = dictionary
    reference = rejection_search(model, x, y, attack="fgsm", attack_kwargs={"eps": 0.1}, alphas=(1, 9, 20),
                                 bounds=(1, 10), refinements=1, relative_grid=(0.4, 0.6, 1.0), noise_samples=50)
    # the tiny dictionary rejects no clean input at its best epsilons: give the cells other rates too
    cells = [c for by_alpha in reference["bounds"].values() for c in by_alpha.values()]
    for cell, k in zip(cells, (0, 1, 5, 18, 35, 36)):
        cell["clean_rejection_rate"] = k / len(y)
    rejector = MaxProbabilityRejector(_plain(), tau=0.3)
    at = _counting(monkeypatch)
    out = rejection_at_clean_rates(rejector, x, y, reference, attack_kwargs={"eps": 0.1}, noise_samples=50)
    assert len(at) == 1 and rejector.epsilon == 0.3  # one attack for all cells; tau restored
    adv = run_attack("fgsm", rejector, x, y, eps=0.1).adversarial
    for b, by_alpha in reference["bounds"].items():
        for a, cell in by_alpha.items():
            row = out["bounds"][b][a]
            assert row["target_clean_rejection_rate"] == cell["clean_rejection_rate"]
            assert row["x_rejected"] == round(cell["clean_rejection_rate"] * len(y))  # the same rate
            rejector.set_epsilon(row["tau"])
            direct = rejection_counts(rejector, x, y, shifted_along_attack(x, adv, float(a), float(b)))
            assert direct.summary().items() <= row.items()
            assert 0 <= row["noise_rejection_rate"] <= 1
    at.clear()
    again = rejection_at_clean_rates(rejector, x, y, reference, attacked=adv, noise_samples=50)
    assert not at and again["bounds"] == out["bounds"]  # a shared attack(x): no attack run


# ---------------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("change,needle", [
    ({"alphas": (1.0, 0.0)}, "alphas must be finite numbers > 0"),
    ({"alphas": (-3.0,)}, "alphas must be finite numbers > 0"),
    ({"alphas": (float("nan"),)}, "alphas must be finite numbers > 0"),
    ({"alphas": ()}, "alphas must not be empty"),
    ({"alphas": 3.0}, "alphas must be a sequence"),
    ({"bounds": (0.0,)}, "bounds must be finite numbers > 0"),
    ({"bounds": (1.0, -10.0)}, "bounds must be finite numbers > 0"),
    ({"bounds": (math.inf,)}, "bounds must be finite numbers > 0"),
    ({"bounds": ()}, "bounds must not be empty"),
    ({"attack": "fgsn"}, "unknown attack 'fgsn'; known: pgd, adam-pgd"),
    ({"model": "plain"}, "cannot reject inputs"),
])
def test_bad_search_inputs_are_one_line_errors_before_any_attack(dictionary, monkeypatch, change, needle):
    model, x, y = dictionary
    kw = {"attack": "fgsm", "alphas": (1.0,), "bounds": (1.0,), **change}
    if kw.pop("model", None) == "plain":
        model = _plain()
    at = _counting(monkeypatch)
    with pytest.raises(InvalidInputError) as err:
        rejection_search(model, x, y, attack_kwargs={"eps": 0.1}, **kw)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg, msg
    assert not at


def test_baseline_refuses_a_reference_from_other_images_and_a_non_rejecting_model(dictionary):
    model, x, y = dictionary
    reference = rejection_search(model, x, y, attack="fgsm", attack_kwargs={"eps": 0.1}, alphas=(1,),
                                 refinements=0, relative_grid=(1.0,), noise_samples=10)
    rejector = MaxProbabilityRejector(_plain())
    for call, needle in [
        (lambda: rejection_at_clean_rates(rejector, x[:-1], y[:-1], reference), "searched on 36 images, got 35"),
        (lambda: rejection_at_clean_rates(_plain(), x, y, reference), "cannot reject inputs"),
        (lambda: rejection_at_clean_rates(rejector, x, y, {"bounds": {}}), "rejection_search result"),
    ]:
        with pytest.raises(InvalidInputError) as err:
            call()
        assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)
