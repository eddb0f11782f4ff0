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


def _slow_candidates(images, rows, top, left, window):
    """Reference for the window queries: each candidate built image by image with a mask."""
    out = []
    for i, r in enumerate(rows.tolist()):
        cand = images[r].clone()
        s = window.shape[-1]
        mask = torch.zeros_like(cand, dtype=torch.bool)
        mask[:, top[i]:top[i] + s, left[i]:left[i] + s] = True
        cand[mask] = window[i].reshape(-1)
        out.append(cand)
    return torch.stack(out)


def test_window_queries_score_the_pasted_candidates():
    from pellucid.models.inference import WindowQueries

    g = torch.Generator().manual_seed(0)
    model = ImageLinear(seed=2).eval()
    x, _ = _data(n=12)
    points = WindowQueries(model, x.clone(), batch_size=64)
    reference = x.clone()
    for side in (1, 3, x.shape[-1]):
        rows = torch.randperm(12, generator=g)[:8]
        top = torch.randint(0, x.shape[-2] - side + 1, (8,), generator=g)
        left = torch.randint(0, x.shape[-1] - side + 1, (8,), generator=g)
        window = torch.rand(8, x.shape[1], side, side, generator=g)
        cand = _slow_candidates(reference, rows, top, left, window)
        with torch.no_grad():
            assert torch.equal(points.query(rows, top, left, window), model(cand))
        keep = torch.rand(8, generator=g) < 0.5
        points.accept(keep)
        reference[rows[keep]] = cand[keep]
        assert torch.equal(points.images, reference)


def test_white_box_window_queries_equal_a_full_forward_pass(authors_model, mnist35_test):
    """The white-box network's local recomputation (TwoStep on the window, conv on a patch) gives
    the bits of a full forward pass, for every window side, at the borders too, after accepts."""
    from pellucid.models.inference import WindowQueries

    g = torch.Generator().manual_seed(1)
    x = mnist35_test.images[:40].clone()
    fast, plain = authors_model.window_queries(x.clone(), 64), WindowQueries(authors_model, x.clone(), 64)
    sides = list(range(1, 29)) + [1, 2, 28]
    with torch.no_grad():
        for side in sides:
            rows = torch.randperm(40, generator=g)[:30]
            edge = torch.tensor([0, 28 - side])  # the first two windows touch opposite corners
            top = torch.cat([edge, torch.randint(0, 28 - side + 1, (28,), generator=g)])
            left = torch.cat([edge, torch.randint(0, 28 - side + 1, (28,), generator=g)])
            window = torch.rand(30, 1, side, side, generator=g)
            expected = authors_model(_slow_candidates(fast.images, rows, top, left, window))
            assert torch.equal(fast.query(rows, top, left, window), expected), side
            assert torch.equal(plain.query(rows, top, left, window), expected), side
            keep = torch.rand(30, generator=g) < 0.5
            fast.accept(keep)
            plain.accept(keep)
            assert torch.equal(fast.images, plain.images)
        # the kept maps are those of the current images
        pixels = authors_model.twostep(fast.images)
        assert torch.equal(fast.pixels[:, :, 4:-4, 4:-4], pixels)
        assert torch.equal(fast.maps[:, :, 2:-2, 2:-2], authors_model.conv(pixels))


class Opaque(nn.Module):
    """The same network without its window queries: Square falls back to full forward passes."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


def test_square_on_the_white_box_network_is_the_same_attack_with_local_queries(authors_model, mnist35_test):
    x, y = mnist35_test.images[:24], mnist35_test.labels[:24]
    runs = [square_native(m, x, y, eps=0.3, queries=150, generator=torch.Generator().manual_seed(3))
            for m in (authors_model, Opaque(authors_model))]
    assert torch.equal(runs[0].adversarial, runs[1].adversarial)
    assert runs[0].stages[0]["queries_spent"] == runs[1].stages[0]["queries_spent"]
    assert within_budget(runs[0].adversarial - x, 0.3, "linf").all()
