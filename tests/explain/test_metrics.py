"""pellucid.explain.metrics against Quantus 0.6.0 (Captum for optimally scaled infidelity) and
against slow per-sample float64 references written here from the papers' formulas.

Every cross-check runs both libraries on the same tiny seeded CNN (1x8x8 inputs, 10 classes), the
same inputs and attributions and the same random draws: Quantus' draws are recorded (or replaced)
through its ``perturb_func``/``explain_func`` hooks and handed to pellucid's explicit-draw options.
Tolerances (``TOL``): 1e-4 relative wherever draws are shared (all metrics below), with a small
absolute floor for scores near 0; one statistical check (faithfulness correlation with each
library's own draws) asks for agreement of the means within 4 standard errors.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from pellucid.errors import InvalidInputError
from pellucid.explain import Gradient
from pellucid.explain import metrics as M

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    quantus = pytest.importorskip("quantus")
    from quantus.functions.similarity_func import ssim as quantus_ssim

pytestmark = pytest.mark.filterwarnings("ignore")  # Quantus warns on every call

# (rtol, atol) per metric; atol only matters for scores near 0
TOL = {
    "infidelity": (1e-4, 1e-9),
    "faithfulness_correlation": (1e-4, 1e-6),
    "faithfulness_estimate": (1e-4, 1e-6),
    "monotonicity_correlation": (1e-4, 1e-6),
    "max_sensitivity": (1e-4, 1e-6),
    "random_logit": (1e-4, 1e-6),
    "model_parameter_randomisation": (1e-4, 1e-6),
    "deletion": (1e-4, 1e-7),
    "pointing_game": (0, 0),
    "focus": (1e-4, 1e-7),
}
QUIET = dict(disable_warnings=True, display_progressbar=False, abs=False, normalise=False)
B = 16


def tiny_cnn(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, 10)).eval().to(dtype)


def make_batch(model: nn.Module, seed: int = 1):
    """Inputs, top classes, gradient x input attributions (tie-free) and gradients."""
    g = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    x = torch.rand(B, 1, 8, 8, generator=g).to(dtype)
    y = model(x).argmax(1)
    grad = Gradient(model).attribute(x, y)
    a = grad * x + 1e-4 * torch.randn(x.shape, generator=g).to(dtype)
    return x, y, a, grad


@pytest.fixture(scope="module")
def setup():
    model = tiny_cnn()
    return (model, *make_batch(model))


def npy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def close(pellucid, reference, metric: str) -> None:
    rtol, atol = TOL[metric]
    reference = np.asarray(reference, dtype=float)
    assert np.isfinite(reference).all() and np.ptp(reference) > 0  # a real, varied comparison
    np.testing.assert_allclose(npy(torch.as_tensor(pellucid)).astype(float),
                               np.asarray(reference, dtype=float), rtol=rtol, atol=atol)


def quantus_gradient(model, inputs, targets, **kwargs):
    """Quantus ``explain_func``: pellucid's gradient (the same explainer on both sides)."""
    return npy(Gradient(model).attribute(torch.as_tensor(inputs), torch.as_tensor(targets).long()))


def run(metric, model, x, y, **kwargs):
    """Call a Quantus metric on pellucid's tensors."""
    kwargs.setdefault("a_batch", None)
    a = kwargs.pop("a_batch")
    return np.asarray(metric(model=model, x_batch=npy(x), y_batch=npy(y),
                             a_batch=None if a is None else npy(a), channel_first=True,
                             device="cpu", **kwargs), dtype=object)


class ReplaceBy:
    """A Quantus ``perturb_func`` replacing the given indices by ``values(call)`` and recording them."""

    def __init__(self, values=lambda call, arr: 0.0):
        self.values, self.indices = values, []

    def __call__(self, arr, indices, **kwargs):
        out = arr.copy()
        rows = np.arange(len(arr))[:, None]
        fill = self.values(len(self.indices), arr)
        out[rows, indices] = fill if np.isscalar(fill) else fill[rows, indices]
        self.indices.append(indices.copy())
        return out


# =========================================================================== Quantus / Captum

def quantus_patch_perturbations(x: torch.Tensor, patch: int) -> torch.Tensor:
    """``I_k = x - x_k`` for Quantus' Infidelity: patches set to 0 one after another, row-major."""
    current, out = x.clone(), []
    for i in range(x.shape[2] // patch):
        for j in range(x.shape[3] // patch):
            current = current.clone()
            current[:, :, i * patch:(i + 1) * patch, j * patch:(j + 1) * patch] = 0
            out.append(x - current)
    return torch.stack(out)


def test_infidelity_matches_quantus(setup):
    model, x, y, a, _ = setup
    q = quantus.Infidelity(perturb_baseline=0.0, perturb_patch_sizes=[4], n_perturb_samples=1, **QUIET)
    expected = run(q, model, x, y, a_batch=a, softmax=False)
    got = M.infidelity(model, x, a, y, perturbations=quantus_patch_perturbations(x, 4),
                       optimal_scaling=False)
    close(got, expected, "infidelity")


def test_optimally_scaled_infidelity_matches_captum(setup):
    captum_metrics = pytest.importorskip("captum.metrics")
    model, x, y, a, _ = setup
    n = 20
    noise = 0.1 * torch.randn(n, *x.shape, generator=torch.Generator().manual_seed(3))

    def perturb(inputs):  # Captum repeats each sample n times, sample-major
        i = noise.transpose(0, 1).reshape(-1, *x.shape[1:])
        return i, inputs - i

    expected = captum_metrics.infidelity(model, perturb, x, a, target=y, n_perturb_samples=n,
                                         normalize=True)
    close(M.infidelity(model, x, a, y, perturbations=noise), npy(expected), "infidelity")


def test_faithfulness_correlation_matches_quantus(setup):
    model, x, y, a, _ = setup
    record = ReplaceBy()
    q = quantus.FaithfulnessCorrelation(nr_runs=30, subset_size=8, perturb_func=record,
                                        return_aggregate=False, **QUIET)
    expected = run(q, model, x, y, a_batch=a, softmax=False)
    subsets = torch.as_tensor(np.stack(record.indices))  # (n, B, size)
    close(M.faithfulness_correlation(model, x, a, y, subsets=subsets, baseline=0.0), expected,
          "faithfulness_correlation")


def test_faithfulness_correlation_own_draws_agree_statistically(setup):
    """Each library's own random subsets: per-sample differences average to 0 within 4 SE."""
    model, x, y, a, _ = setup
    np.random.seed(0)
    q = quantus.FaithfulnessCorrelation(nr_runs=60, subset_size=8, perturb_baseline=0.0,
                                        return_aggregate=False, **QUIET)
    theirs = run(q, model, x, y, a_batch=a, softmax=False).astype(float)
    ours = npy(M.faithfulness_correlation(model, x, a, y, subset_size=8, n_draws=60, seed=0))
    diff = ours - theirs
    assert abs(diff.mean()) < 4 * diff.std(ddof=1) / np.sqrt(len(diff)) + 1e-12


@pytest.mark.parametrize("step", [1, 4])
def test_faithfulness_estimate_matches_quantus(setup, step):
    model, x, y, a, _ = setup
    q = quantus.FaithfulnessEstimate(features_in_step=step, perturb_baseline=0.0, **QUIET)
    expected = run(q, model, x, y, a_batch=a, softmax=False)
    close(M.faithfulness_estimate(model, x, a, y, features_in_step=step, baseline=0.0), expected,
          "faithfulness_estimate")


@pytest.mark.parametrize("step", [1, 4])
def test_monotonicity_correlation_matches_quantus(setup, step):
    model, x, y, a, _ = setup
    n = 4
    draws = torch.rand(n, *x.shape, generator=torch.Generator().manual_seed(5))
    flat = npy(draws).reshape(n, B, -1)
    replace = ReplaceBy(lambda call, arr: flat[call % n])  # Quantus: draws inner, groups outer
    q = quantus.MonotonicityCorrelation(nr_samples=n, features_in_step=step, perturb_func=replace,
                                        **QUIET)
    expected = run(q, model, x, y, a_batch=a, softmax=False)
    got = M.monotonicity_correlation(model, x, a, y, n_samples=n, features_in_step=step,
                                     baseline=draws)
    close(got, expected, "monotonicity_correlation")


def test_max_sensitivity_matches_quantus(setup):
    model, x, y, _, grad = setup
    n = 5
    noise = 0.2 * (2 * torch.rand(n, *x.shape, generator=torch.Generator().manual_seed(6)) - 1)
    calls = []

    def add_noise(arr, indices, **kwargs):
        calls.append(len(calls))
        return (arr + npy(noise[calls[-1]]).reshape(len(arr), -1)).astype(arr.dtype)

    q = quantus.MaxSensitivity(nr_samples=n, perturb_func=add_noise, **QUIET)
    expected = run(q, model, x, y, a_batch=grad, explain_func=quantus_gradient, softmax=False)
    got = M.max_sensitivity(model, x, grad, y, explainer="gradient", perturbations=noise)
    close(got, expected, "max_sensitivity")


def test_random_logit_matches_quantus(setup):
    model, x, y, _, grad = setup
    asked = []

    def explain(model, inputs, targets, **kwargs):
        asked.append(np.asarray(targets))
        return quantus_gradient(model, inputs, targets)

    q = quantus.RandomLogit(num_classes=10, seed=7, **QUIET)
    expected = run(q, model, x, y, a_batch=grad, explain_func=explain, softmax=False)
    got = M.random_logit(model, x, grad, y, similarity="ssim_flat",
                         other_targets=torch.as_tensor(asked[-1]))
    close(got, expected, "random_logit")


def test_ssim_matches_quantus_2d(setup):
    _, x, _, a, grad = setup
    expected = [quantus_ssim(npy(a[b, 0]).astype(float), npy(grad[b, 0]).astype(float))
                for b in range(B)]
    close(M.ssim(a, grad), expected, "random_logit")


def test_model_parameter_randomisation_matches_quantus(setup):
    model, x, y, _, grad = setup
    q = quantus.MPRT(seed=4, **QUIET)  # Quantus seeds each layer with seed + 1
    expected = quantus.MPRT.__call__(q, model=model, x_batch=npy(x), y_batch=npy(y),
                                     a_batch=npy(grad), channel_first=True,
                                     explain_func=quantus_gradient, device="cpu")
    got = M.model_parameter_randomisation(model, x, grad, y, explainer="gradient", seed=5)
    assert got.layers == ("5", "2", "0")
    for i, layer in enumerate(got.layers):
        close(got.curve[:, i], expected[layer], "model_parameter_randomisation")


def test_deletion_matches_quantus_pixel_flipping(setup):
    model, x, y, a, _ = setup
    q = quantus.PixelFlipping(features_in_step=4, perturb_baseline=0.0, **QUIET)
    expected = run(q, model, x, y, a_batch=a, softmax=True)
    got = M.deletion(model, x, a, y, features_in_step=4, baseline=0.0, softmax=True)
    close(got.curve[:, 1:], np.stack(expected).astype(float), "deletion")


def test_pointing_game_matches_quantus(setup):
    model, x, y, a, _ = setup
    mask = torch.rand(B, 1, 8, 8, generator=torch.Generator().manual_seed(8)) > 0.6
    q = quantus.PointingGame(**QUIET)
    expected = run(q, model, x, y, a_batch=a, s_batch=npy(mask).astype(float))
    close(M.pointing_game(model, x, a, y, mask=mask), expected.astype(float), "pointing_game")


def test_focus_matches_quantus(setup):
    model, *_ = setup
    g = torch.Generator().manual_seed(9)
    tiles, labels = torch.rand(40, 1, 4, 4, generator=g), torch.arange(40) % 4
    mosaics = M.make_mosaics(tiles, labels, B, seed=2)
    a = torch.randn(mosaics.images.shape, generator=g)
    flags = [tuple(int(v) for v in m[0, ::4, ::4].flatten()) for m in mosaics.masks]
    q = quantus.Focus(**QUIET)
    expected = run(q, model, mosaics.images, mosaics.targets, a_batch=a, custom_batch=flags)
    got = M.focus(model, mosaics.images, a, mosaics.targets, mask=mosaics.masks)
    close(got, expected.astype(float), "focus")


# =========================================================================== slow float64 references

@pytest.fixture(scope="module", params=[1, 2], ids=["seed1", "seed2"])
def setup64(request):
    model = tiny_cnn(torch.float64)
    return (model, *make_batch(model, seed=request.param))


def score(model, x, y, softmax=False) -> float:
    """f(x) of one sample ``x (C, H, W)`` for class ``y``."""
    out = model(x.unsqueeze(0))[0]
    return float(out.softmax(0)[y] if softmax else out[y])


def assert_reference(got, expected) -> None:
    np.testing.assert_allclose(npy(torch.as_tensor(got)), np.asarray(expected), rtol=1e-9, atol=1e-12)


@torch.no_grad()
def test_infidelity_reference(setup64):
    model, x, y, a, _ = setup64
    noise = 0.1 * torch.randn(7, *x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(0))
    expected = []
    for b in range(B):
        p = np.array([float((noise[k, b] * a[b]).sum()) for k in range(len(noise))])
        d = np.array([score(model, x[b], y[b]) - score(model, x[b] - noise[k, b], y[b])
                      for k in range(len(noise))])
        beta = (p @ d) / (p @ p)
        expected.append(np.mean((beta * p - d) ** 2))
    assert_reference(M.infidelity(model, x, a, y, perturbations=noise), expected)


def test_infidelity_is_scale_invariant(setup):
    model, x, y, a, _ = setup
    base = M.infidelity(model, x, a, y, n_perturbations=30, seed=4)
    for c in (1e-3, 7.0):
        torch.testing.assert_close(M.infidelity(model, x, c * a, y, n_perturbations=30, seed=4), base,
                                   rtol=1e-5, atol=0)
    raw = M.infidelity(model, x, 7.0 * a, y, n_perturbations=30, seed=4, optimal_scaling=False)
    assert not torch.allclose(raw, base)


@torch.no_grad()
def test_faithfulness_correlation_reference(setup64):
    model, x, y, a, _ = setup64
    g = torch.Generator().manual_seed(0)
    subsets = torch.stack([torch.stack([torch.randperm(64, generator=g)[:10] for _ in range(B)])
                           for _ in range(12)])  # (n, B, 10)
    expected = []
    for b in range(B):
        sums, drops = [], []
        for s in subsets[:, b]:
            xs = x[b].clone().flatten()
            xs[s] = 0.5
            sums.append(float(a[b].flatten()[s].sum()))
            drops.append(score(model, x[b], y[b]) - score(model, xs.view_as(x[b]), y[b]))
        expected.append(np.corrcoef(sums, drops)[0, 1])
    got = M.faithfulness_correlation(model, x, a, y, subsets=subsets, baseline=0.5)
    assert_reference(got, expected)


@torch.no_grad()
@pytest.mark.parametrize("step", [1, 5])
def test_faithfulness_estimate_reference(setup64, step):
    model, x, y, a, _ = setup64
    expected = []
    for b in range(B):
        order = np.argsort(-npy(a[b]).flatten(), kind="stable")
        sums, drops = [], []
        for j in range(0, 64, step):
            xs = x[b].clone().flatten()
            xs[order[j:j + step]] = x[b].min()
            sums.append(float(a[b].flatten()[order[j:j + step]].sum()))
            drops.append(score(model, x[b], y[b]) - score(model, xs.view_as(x[b]), y[b]))
        expected.append(np.corrcoef(sums, drops)[0, 1])
    got = M.faithfulness_estimate(model, x, a, y, features_in_step=step, baseline="black")
    assert_reference(got, expected)


@torch.no_grad()
def test_monotonicity_correlation_reference(setup64):
    model, x, y, a, _ = setup64
    n, step = 3, 4
    draws = torch.rand(n, *x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(0))
    expected = []
    for b in range(B):
        order = np.argsort(npy(a[b]).flatten(), kind="stable")
        sums, variation = [], []
        for j in range(0, 64, step):
            group = order[j:j + step]
            changes = []
            for s in range(n):
                xs = x[b].clone().flatten()
                xs[group] = draws[s, b].flatten()[group]
                changes.append((score(model, x[b], y[b]) - score(model, xs.view_as(x[b]), y[b])) ** 2)
            sums.append(float(a[b].flatten()[group].sum()))
            variation.append(np.mean(changes))
        expected.append(scipy.stats.spearmanr(sums, variation)[0])
    got = M.monotonicity_correlation(model, x, a, y, n_samples=n, features_in_step=step, baseline=draws)
    assert_reference(got, expected)


def test_max_sensitivity_reference(setup64):
    model, x, y, _, grad = setup64
    noise = 0.2 * (2 * torch.rand(4, *x.shape, dtype=x.dtype,
                                  generator=torch.Generator().manual_seed(0)) - 1)
    explainer = Gradient(model)
    expected = []
    for b in range(B):
        ratios = [float((explainer.attribute((x[b] + d[b])[None], int(y[b]))[0] - grad[b]).norm()
                        / grad[b].norm()) for d in noise]
        expected.append(max(ratios))
    for spec in ("gradient", explainer, lambda m, xs, t: Gradient(m).attribute(xs, t)):
        assert_reference(M.max_sensitivity(model, x, grad, y, explainer=spec, perturbations=noise,
                                           batch_size=5), expected)


@torch.no_grad()
@pytest.mark.parametrize("kind", ["deletion", "insertion"])
@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_perturbation_curve_reference(setup64, kind, order):
    model, x, y, a, _ = setup64
    step, base = 5, 0.25
    expected_curve, expected_auc = [], []
    for b in range(B):
        values = npy(a[b]).flatten()
        ranking = np.argsort(-values if order == "morf" else values, kind="stable")
        curve = []
        for t in range(0, 14):  # ceil(64 / 5) = 13 steps after the start
            chosen = ranking[:t * step]
            if kind == "deletion":
                xs = x[b].clone().flatten()
                xs[chosen] = base
            else:
                xs = torch.full_like(x[b], base).flatten()
                xs[chosen] = x[b].flatten()[chosen]
            curve.append(score(model, xs.view_as(x[b]), y[b], softmax=True))
        fractions = np.minimum(np.arange(14) * step, 64) / 64
        expected_curve.append(curve)
        expected_auc.append(sum((fractions[i + 1] - fractions[i]) * (curve[i] + curve[i + 1]) / 2
                                for i in range(13)))
    fn = M.deletion if kind == "deletion" else M.insertion
    got = fn(model, x, a, y, order=order, features_in_step=step, baseline=base, softmax=True)
    assert_reference(got.curve, expected_curve)
    assert_reference(got.auc, expected_auc)
    assert_reference(got.fractions, fractions)


def skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    r = max(a.max(), b.max()) - min(a.min(), b.min())
    return float(np.mean([structural_similarity(a[c], b[c], data_range=r) for c in range(len(a))]))


def test_random_logit_reference(setup64):
    model, x, y, _, grad = setup64
    other = (y + 3) % 10
    expected = []
    for b in range(B):
        moved = Gradient(model).attribute(x[b:b + 1], int(other[b]))[0]
        expected.append(skimage_ssim(npy(grad[b]), npy(moved)))
    assert_reference(M.random_logit(model, x, grad, y, other_targets=other), expected)
    drawn = M.random_logit(model, x, grad, y, seed=3)
    assert drawn.shape == (B,) and bool(torch.isfinite(drawn).all())


def test_ssim_of_colour_maps_reference():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, 3, 9, 11, generator=g, dtype=torch.float64)
    assert_reference(M.ssim(a, b), [skimage_ssim(npy(a[i]), npy(b[i])) for i in range(3)])


@pytest.mark.parametrize("cascading", [True, False])
def test_model_parameter_randomisation_reference(setup64, cascading):
    model, x, y, _, grad = setup64
    before = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    got = M.model_parameter_randomisation(model, x, grad, y, cascading=cascading, seed=11)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is left as it was
    names = [n for n, m in model.named_modules() if hasattr(m, "reset_parameters")][::-1]
    randomised = copy.deepcopy(model)
    for i, name in enumerate(names):
        if not cascading:
            randomised = copy.deepcopy(model)
        torch.manual_seed(11)
        dict(randomised.named_modules())[name].reset_parameters()
        moved = Gradient(randomised).attribute(x, y)
        expected = [scipy.stats.spearmanr(npy(grad[b]).ravel(), npy(moved[b]).ravel())[0]
                    for b in range(B)]
        assert_reference(got.curve[:, i], expected)
    assert_reference(got.score, got.curve[:, -1])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched


def test_pointing_game_and_focus_reference(setup64):
    _, x, y, a, _ = setup64
    mask = torch.zeros(B, 1, 8, 8, dtype=torch.bool)
    mask[:, :, :4] = True
    mask[0] = False
    hits, shares = [], []
    for b in range(B):
        flat, inside = npy(a[b]).ravel(), npy(mask[b]).ravel()
        hits.append(np.nan if not inside.any() else float(inside[flat == flat.max()].any()))
        positive = np.clip(flat, 0, None)
        shares.append(positive[inside].sum() / positive.sum())
    assert_reference(M.pointing_game(None, x, a, mask=mask), hits)
    assert_reference(M.focus(None, x, a, mask=mask.float()), shares)


def test_ranks_and_correlations_with_ties_reference():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 4, (5, 30), generator=g).double()  # many ties
    b = torch.randn(5, 30, generator=g, dtype=torch.float64)
    assert_reference(M.average_ranks(a), [scipy.stats.rankdata(row) for row in npy(a)])
    assert_reference(M.spearman(a, b), [scipy.stats.spearmanr(r, s)[0] for r, s in zip(npy(a), npy(b))])
    assert_reference(M.pearson(a, b), [np.corrcoef(r, s)[0, 1] for r, s in zip(npy(a), npy(b))])
    assert_reference(M.cosine(a, b), [r @ s / np.linalg.norm(r) / np.linalg.norm(s)
                                      for r, s in zip(npy(a), npy(b))])


def test_mosaics():
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(30, 2, 3, 5, generator=g), torch.arange(30) % 5
    m = M.make_mosaics(images, labels, 12, seed=4)
    assert m.images.shape == (12, 2, 6, 10) and m.masks.shape == (12, 1, 6, 10)
    for i in range(12):
        tiles = m.sources[i]
        assert len(set(tiles.tolist())) == 4
        is_target = labels[tiles] == m.targets[i]
        assert int(is_target.sum()) == 2
        torch.testing.assert_close(M.quadrant_masks(is_target[None], 3, 5), m.masks[i:i + 1])
        for q, (r, c) in enumerate([(0, 0), (0, 5), (3, 0), (3, 5)]):
            torch.testing.assert_close(m.images[i, :, r:r + 3, c:c + 5], images[tiles[q]])
    again = M.make_mosaics(images, labels, 12, seed=4)
    assert torch.equal(again.sources, m.sources)


# =========================================================================== behaviour

def test_chunking_and_seeds_do_not_change_results(setup):
    model, x, y, a, _ = setup
    big = M.faithfulness_correlation(model, x, a, y, subset_size=8, n_draws=20, seed=3)
    small = M.faithfulness_correlation(model, x, a, y, subset_size=8, n_draws=20, seed=3, batch_size=3)
    torch.testing.assert_close(small, big, rtol=1e-5, atol=1e-6)
    by_generator = M.faithfulness_correlation(model, x, a, y, subset_size=8, n_draws=20,
                                              seed=torch.Generator().manual_seed(3))
    torch.testing.assert_close(by_generator, big)
    other = M.faithfulness_correlation(model, x, a, y, subset_size=8, n_draws=20, seed=4)
    assert not torch.allclose(other, big)


def test_every_registered_metric_runs(setup):
    model, x, y, a, _ = setup
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[..., :4, :4] = True
    options = {"faithfulness_correlation": dict(subset_size=8, n_draws=10),
               "monotonicity_correlation": dict(n_samples=2, features_in_step=8),
               "infidelity": dict(n_perturbations=5), "max_sensitivity": dict(n_draws=2),
               "deletion": dict(features_in_step=8), "insertion": dict(features_in_step=8),
               "pointing_game": dict(mask=mask), "focus": dict(mask=mask)}
    for name in M.METRICS:
        metric = M.create_metric(name, **options.get(name, {}))
        assert isinstance(metric.higher_is_better, bool)
        out = metric(model, x, a, y)
        scores = out if isinstance(out, torch.Tensor) else getattr(out, "auc", None)
        scores = getattr(out, "score", scores)
        assert scores.shape == (B,) and bool(torch.isfinite(scores).all()), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(setup):
    model, x, y, a, grad = setup
    gpu = copy.deepcopy(model).cuda()
    draws = torch.rand(3, *x.shape, generator=torch.Generator().manual_seed(0))
    pairs = [(M.monotonicity_correlation, dict(n_samples=3, features_in_step=4, baseline=draws)),
             (M.faithfulness_estimate, dict(features_in_step=2)),
             (M.infidelity, dict(perturbations=draws - 0.5))]
    for fn, kw in pairs:
        kw_gpu = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
        torch.testing.assert_close(fn(gpu, x.cuda(), a.cuda(), y.cuda(), **kw_gpu).cpu(),
                                   fn(model, x, a, y, **kw), rtol=1e-3, atol=1e-5)
    own = M.faithfulness_correlation(gpu, x.cuda(), a.cuda(), y.cuda(), subset_size=8, n_draws=10)
    assert own.device.type == "cuda" and bool(torch.isfinite(own).all())


def bad_calls(model, x, y, a):
    nan_a = a.clone()
    nan_a[0, 0, 0, 0] = float("nan")
    inf_x = x.clone()
    inf_x[1, 0, 2, 2] = float("inf")
    return {
        "attribution shape": lambda: M.infidelity(model, x, a[:, :, :4], y),
        "attribution NaN": lambda: M.faithfulness_estimate(model, x, nan_a, y),
        "inputs inf": lambda: M.deletion(model, inf_x, a, y),
        "one draw": lambda: M.faithfulness_correlation(model, x, a, y, n_draws=1, subset_size=4),
        "one subset": lambda: M.faithfulness_correlation(
            model, x, a, y, subsets=torch.zeros(1, B, 3, dtype=torch.long)),
        "subset too big": lambda: M.faithfulness_correlation(model, x, a, y, subset_size=65),
        "subset size 0": lambda: M.faithfulness_correlation(model, x, a, y, subset_size=0),
        "one group": lambda: M.faithfulness_estimate(model, x, a, y, features_in_step=64),
        "step 0": lambda: M.monotonicity_correlation(model, x, a, y, features_in_step=0),
        "noise 0": lambda: M.infidelity(model, x, a, y, noise_std=0.0),
        "radius < 0": lambda: M.max_sensitivity(model, x, a, y, radius=-1.0),
        "batch size 0": lambda: M.infidelity(model, x, a, y, batch_size=0),
        "seed str": lambda: M.infidelity(model, x, a, y, seed="zero"),
        "baseline name": lambda: M.faithfulness_estimate(model, x, a, y, baseline="blak"),
        "baseline shape": lambda: M.deletion(model, x, a, y, baseline=torch.zeros(3, 8)),
        "baseline draws": lambda: M.monotonicity_correlation(
            model, x, a, y, n_samples=4, baseline=torch.zeros(3, *x.shape)),
        "perturbations shape": lambda: M.infidelity(model, x, a, y, perturbations=torch.zeros(5, 8)),
        "similarity name": lambda: M.random_logit(model, x, a, y, similarity="ssimm"),
        "order name": lambda: M.deletion(model, x, a, y, order="random"),
        "explainer name": lambda: M.max_sensitivity(model, x, a, y, explainer="gradientt"),
        "explainer of another model": lambda: M.model_parameter_randomisation(
            model, x, a, y, explainer=Gradient(model)),
        "callable target": lambda: M.random_logit(model, x, a, lambda out: out[:, 0]),
        "other targets equal": lambda: M.random_logit(model, x, a, y, other_targets=y),
        "mask shape": lambda: M.pointing_game(model, x, a, mask=torch.ones(B, 1, 4, 4)),
        "mask values": lambda: M.focus(model, x, a, mask=torch.full((B, 1, 8, 8), 0.5)),
        "metric name": lambda: M.create_metric("infidelityy"),
        "metric option": lambda: M.create_metric("infidelity", n_draws=3),
        "ssim too small": lambda: M.ssim(torch.rand(2, 1, 5, 5), torch.rand(2, 1, 5, 5)),
        "mosaic classes": lambda: M.make_mosaics(torch.rand(3, 1, 4, 4),
                                                 torch.zeros(3, dtype=torch.long), 2),
    }


@pytest.mark.parametrize("case", list(bad_calls(None, torch.zeros(B, 1, 8, 8), None,
                                                torch.zeros(B, 1, 8, 8))))
def test_bad_inputs_raise_one_line_errors(setup, case):
    model, x, y, a, _ = setup
    with pytest.raises(InvalidInputError) as info:
        bad_calls(model, x, y, a)[case]()
    assert "\n" not in str(info.value) and str(info.value)


# -- options for models with a fixed input domain and for deep models ------------------------------

def test_value_range_clips_perturbations_and_uses_the_applied_perturbation():
    from pellucid.explain.metrics import infidelity, max_sensitivity

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).double().eval()
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    a = torch.randn_like(x)
    noise = 0.3 * torch.randn(6, *x.shape, dtype=torch.float64)
    got = infidelity(model, x, a, 1, perturbations=noise, value_range=(0.0, 1.0))
    applied = x - (x - noise).clamp(0, 1)  # slow reference: the plain metric on the applied noise
    want = infidelity(model, x, a, 1, perturbations=applied)
    assert torch.allclose(got, want, rtol=1e-12) and not torch.allclose(got, infidelity(model, x, a, 1, perturbations=noise))
    seen = []

    def explain(m, rows, target):
        seen.append(rows.clone())
        return torch.ones_like(rows)

    max_sensitivity(model, x, a, 1, explainer=explain, perturbations=noise, value_range=(0.0, 1.0))
    assert float(torch.cat(seen).min()) >= 0 and float(torch.cat(seen).max()) <= 1
    for bad in ((1.0, 0.0), (0, float("nan")), "ab"):
        with pytest.raises(InvalidInputError, match="value_range"):
            infidelity(model, x, a, 1, perturbations=noise, value_range=bad)


def test_parameter_randomisation_can_stop_after_the_top_layers():
    from pellucid.explain.metrics import model_parameter_randomisation

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(),
                                torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    x = torch.rand(3, 1, 4, 4)
    a = torch.randn_like(x)
    full = model_parameter_randomisation(model, x, a, 1)
    top = model_parameter_randomisation(model, x, a, 1, max_layers=2)
    assert len(full.layers) == 3 and top.layers == full.layers[:2]
    assert torch.equal(top.curve, full.curve[:, :2]) and torch.equal(top.score, full.curve[:, 1])
    with pytest.raises(InvalidInputError, match="max_layers"):
        model_parameter_randomisation(model, x, a, 1, max_layers=0)


def test_per_sample_cosine_targets_follow_their_sample_through_perturbed_copies():
    """A cosine target with one reference per sample scores each perturbed copy against its own
    sample's reference (copies are tiled, chunks sliced): equal to one sample at a time."""
    from pellucid.explain.metrics import faithfulness_correlation, max_sensitivity
    from pellucid.explain.targets import cosine_similarity_target

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 5), torch.nn.Tanh()).double().eval()
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    refs = torch.randn(3, 5, dtype=torch.float64)
    a = torch.randn_like(x)
    together = faithfulness_correlation(model, x, a, cosine_similarity_target(refs), subset_size=4,
                                        n_draws=6, seed=3, batch_size=5)
    noise = 0.05 * torch.rand(4, *x.shape, dtype=torch.float64)
    sens = max_sensitivity(model, x, a, cosine_similarity_target(refs), explainer="gradient",
                           perturbations=noise, batch_size=4)
    for b in range(3):
        alone_fc = faithfulness_correlation(model, x, a, cosine_similarity_target(refs), subset_size=4,
                                            n_draws=6, seed=3, batch_size=1000)[b]
        assert torch.allclose(together[b], alone_fc, rtol=1e-9)
        alone = max_sensitivity(model, x[b:b + 1], a[b:b + 1], cosine_similarity_target(refs[b:b + 1]),
                                explainer="gradient", perturbations=noise[:, b:b + 1])
        assert torch.allclose(sens[b], alone[0], rtol=1e-9)
