import pytest
import torch
from torch import nn

from pellucid.robust import (accuracy_vs_eps, eval_mode, evaluate_robustness, fgsm, pgd,
                             reliability_curve)


class Linear2(nn.Module):
    """Binary linear classifier: logits (0, w.x + b)."""

    def __init__(self, d=20):
        super().__init__()
        self.w = nn.Parameter(torch.randn(d, dtype=torch.float64))
        self.b = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x):
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(z), z], 1)


def test_pgd_linf_reaches_the_closed_form_worst_case_of_a_linear_model():
    model = Linear2()
    x = torch.rand(64, 20, dtype=torch.float64) * 0.5 + 0.25  # far from the box edges
    y = torch.ones(64, dtype=torch.long)
    eps = 0.1
    x_adv = pgd(model, x, y, eps=eps, steps=10, step_size=0.05)
    z_adv = x_adv @ model.w.detach()
    # worst case for class 1: z - eps * ||w||_1 (attained at x - eps * sign(w))
    expected = x @ model.w.detach() - eps * model.w.detach().abs().sum()
    assert torch.allclose(z_adv, expected, atol=1e-10)
    assert (x_adv - x).abs().max() <= eps + 1e-12


def test_pgd_l2_stays_in_the_ball_and_matches_linear_worst_case():
    model = Linear2()
    x = torch.rand(32, 20, dtype=torch.float64) * 0.2 + 0.4
    y = torch.ones(32, dtype=torch.long)
    x_adv = pgd(model, x, y, eps=0.05, steps=20, step_size=0.02, norm="l2")
    assert ((x_adv - x).norm(dim=1) <= 0.05 + 1e-9).all()
    expected = x @ model.w.detach() - 0.05 * model.w.detach().norm()
    assert torch.allclose(x_adv @ model.w.detach(), expected, atol=1e-6)


def test_fgsm_is_one_signed_step():
    model = Linear2()
    x = torch.rand(8, 20, dtype=torch.float64) * 0.5 + 0.25
    y = torch.ones(8, dtype=torch.long)
    assert torch.allclose(fgsm(model, x, y, eps=0.1), x - 0.1 * model.w.detach().sign())


def test_eps_zero_gives_clean_accuracy_and_accuracy_never_rises_with_eps(authors_model, mnist35_test):
    sub = mnist35_test.subset(slice(0, 200))
    r0 = evaluate_robustness(authors_model, sub.images, sub.labels, eps=0.0, steps=3)
    assert r0.robust_accuracy == r0.clean_accuracy
    points = accuracy_vs_eps(authors_model, sub.images, sub.labels, [0.0, 0.1, 0.2, 0.3, 0.5],
                             steps=10, random_start=False)
    accs = [p["robust_accuracy"] for p in points]
    assert all(a >= b for a, b in zip(accs, accs[1:])), accs
    assert accs[-1] < accs[0]


def test_attacks_restore_the_training_mode_even_on_errors():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.Dropout()).train()
    with pytest.raises(RuntimeError):
        with eval_mode(model):
            assert not model.training
            raise RuntimeError("boom")
    assert all(m.training for m in model.modules())
    pgd(model, torch.rand(3, 4), torch.zeros(3, dtype=torch.long), eps=0.1, steps=2)
    assert all(m.training for m in model.modules())


def test_reliability_curve_identities():
    torch.manual_seed(0)
    logits = torch.randn(500, 3)
    labels = torch.randint(0, 3, (500,))
    curve = reliability_curve(logits, labels)
    acc = (logits.argmax(1) == labels).double().mean().item()
    # the curve ends where every input is accepted: recall 1, precision = accuracy
    assert curve.recall[-1] == pytest.approx(1.0) and curve.precision[-1] == pytest.approx(acc)
    assert curve.accuracy == pytest.approx(acc)
    # the highest threshold that reaches full recall drops only wrong answers
    assert curve.precision_at_recall(1.0) >= acc
    assert (curve.thresholds[1:] < curve.thresholds[:-1]).all()  # one point per distinct score
    # confident-correct, unsure-wrong: perfect separation
    logits = torch.tensor([[5.0, 0], [4, 0], [3, 0], [0.1, 0], [0.2, 0]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    sep = reliability_curve(logits, labels)
    assert sep.precision_at_recall(1.0) == pytest.approx(1.0)
    assert sep.average_precision == pytest.approx(1.0)


def test_reliability_curve_handles_ties_as_one_threshold():
    logits = torch.tensor([[1.0, 0], [1.0, 0], [1.0, 0], [1.0, 0]])
    labels = torch.tensor([0, 1, 0, 1])
    curve = reliability_curve(logits, labels)
    assert len(curve.thresholds) == 1 and curve.precision[0] == pytest.approx(0.5)


def test_authors_model_pgd40_matches_published_robustness(authors_model, mnist35_test):
    sub = mnist35_test.subset(slice(0, 400))
    r = evaluate_robustness(authors_model, sub.images, sub.labels, eps=0.3, step_size=0.1,
                            steps=40, seed=0)
    assert r.clean_accuracy >= 0.99
    assert 0.88 <= r.robust_accuracy <= 0.97  # paper: 92.6 % on all 1,902


def test_precision_at_recall_interval_brackets_the_estimate_and_shrinks_with_n():
    from pellucid.robust import precision_at_recall_interval

    torch.manual_seed(0)

    def noisy(n):  # confidence loosely tied to correctness, about 90 % correct
        labels = torch.zeros(n, dtype=torch.long)
        wrong = torch.rand(n) < 0.1
        margin = torch.randn(n) + 1.5 * torch.where(wrong, -1.0, 1.0)
        return torch.stack([margin, torch.zeros(n)], 1), labels

    logits, labels = noisy(2000)
    point = reliability_curve(logits, labels).precision_at_recall(0.8)
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    lo, hi = precision_at_recall_interval(logits, labels, 0.8, generator=gen())
    # width close to the binomial one, 2 * 1.96 * sqrt(P (1 - P) / k), k = inputs accepted there
    accepted = 0.8 * (logits.argmax(1) == labels).sum().item() / point
    binomial = 3.92 * (point * (1 - point) / accepted) ** 0.5
    assert lo < point < hi and 0.5 < (hi - lo) / binomial < 2
    assert (lo, hi) == precision_at_recall_interval(logits, labels, 0.8, generator=gen())
    small = precision_at_recall_interval(*noisy(200), 0.8, generator=gen())
    assert small[1] - small[0] > hi - lo  # ten times fewer inputs: a wider interval
    # perfect separation: every replicate has precision 1
    sep = torch.tensor([[5.0, 0], [4, 0], [3, 0], [0.1, 0], [0.2, 0]])
    assert precision_at_recall_interval(sep, torch.tensor([0, 0, 0, 1, 1]), 1.0,
                                        generator=gen()) == (1.0, 1.0)


def test_precision_at_recall_interval_replicate_of_all_ones_equals_the_curve():
    # the bootstrap's shared-sort arithmetic, checked on the identity redraw (each input once)
    from pellucid.robust import reliability as rel

    torch.manual_seed(3)
    logits = torch.randn(300, 2).round(decimals=1)  # many ties
    labels = torch.randint(0, 2, (300,))
    _, correct, last = rel._sorted_correctness(logits, labels)
    tp, n_pred = torch.cumsum(correct, 0), torch.arange(1, 301, dtype=torch.float64)
    first = ((tp / tp[-1] >= 0.8 - 1e-12) & last).double().argmax()
    expected = reliability_curve(logits, labels).precision_at_recall(0.8)
    assert float(tp[first] / n_pred[first]) == pytest.approx(expected)
