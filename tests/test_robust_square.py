"""The native Square attack: the linear model's closed-form worst case, budgets, query economy."""

import pytest
import torch
from torch import nn

from pellucid.errors import InvalidInputError
from pellucid.robust import evaluate_robustness, within_budget
from pellucid.robust.square import margin, square_fraction, square_native

from test_robust_art import Constant, ImageLinear, _closed_form_robust, _data


class CountingModel(nn.Module):
    """Counts the images it is asked to classify."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, 0

    def forward(self, x):
        self.seen += len(x)
        return self.model(x)


def test_schedule_halves_p_at_the_papers_milestones():
    assert square_fraction(0.8, 0, 10_000) == 0.8
    assert square_fraction(0.8, 10, 10_000) == 0.8  # halving happens after 10, not at it
    assert square_fraction(0.8, 11, 10_000) == 0.4
    assert square_fraction(0.8, 201, 10_000) == pytest.approx(0.1)
    assert square_fraction(0.8, 9_999, 10_000) == pytest.approx(0.8 / 512)
    assert square_fraction(0.8, 100, 1_000) == square_fraction(0.8, 1_000, 10_000)  # rescaled


def test_margin_is_true_logit_minus_best_other():
    z = torch.tensor([[2.0, 1.0, -1.0], [0.0, 3.0, 1.0]])
    assert torch.equal(margin(z, torch.tensor([0, 0])), torch.tensor([1.0, -3.0]))


def test_reaches_the_linear_models_closed_form_worst_case():
    # random search over vertices: on 8x8 images with 400 queries it finds every flippable image
    model, (x, y), eps = ImageLinear(), _data(), 0.15
    expected, z = _closed_form_robust(model, x, y, eps)
    res = evaluate_robustness(model, x, y, attack="square-native", eps=eps, queries=400, seed=0)
    clear = z.abs() > 1e-3
    assert clear.sum() > 30
    assert 0 < float(expected.float().mean()) < res.clean_accuracy  # some break, some cannot
    assert torch.equal(res.robust[clear], expected[clear])
    assert within_budget(res.adversarial - x, eps, "linf").all()
    assert ((res.adversarial >= 0) & (res.adversarial <= 1)).all()


def test_never_beats_the_optimum_and_is_reproducible():
    model, (x, y), eps = ImageLinear(seed=3), _data(seed=4), 0.05
    expected, _ = _closed_form_robust(model, x, y, eps)
    a = square_native(model, x, y, eps=eps, queries=50, generator=torch.Generator().manual_seed(1))
    b = square_native(model, x, y, eps=eps, queries=50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.adversarial, b.adversarial)
    robust = (model(a.adversarial).argmax(1) == y) & (model(x).argmax(1) == y)
    assert (robust | ~expected).all()  # an image robust in closed form stays robust


def test_queries_only_the_images_still_robust_and_stops_when_none_are():
    x, y = _data(n=20)
    model = CountingModel(Constant())  # nothing can be broken: every robust image is queried
    run = square_native(model, x, y, eps=0.3, queries=30)
    n_robust = int((Constant()(x).argmax(1) == y).sum())
    assert model.seen == len(x) + 30 * n_robust  # clean pass + 1 stripe start + 29 windows each
    assert run.stages[0]["queries_spent"] == 30 * n_robust
    flip = CountingModel(ImageLinear())
    xs, ys = _data(n=20)
    square_native(flip, xs, ys, eps=1.0, queries=1000)  # eps 1: the first stripes break almost all
    assert flip.seen < 20 * 50


def test_bad_arguments_raise_clear_errors():
    x, y = _data(n=4)
    for kw, msg in (({"norm": "l2"}, "L-inf"), ({"queries": 0}, "queries"), ({"eps": -1.0}, "eps"),
                    ({"p_init": 0.0}, "p_init")):
        with pytest.raises(InvalidInputError, match=msg):
            square_native(ImageLinear(), x, y, **{"eps": 0.1, **kw})
    with pytest.raises(InvalidInputError, match="images"):
        square_native(ImageLinear(), x.flatten(1), y, eps=0.1)
