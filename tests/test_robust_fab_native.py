"""pellucid's FAB-T (``fab-t-native``) and the ``native-standard`` budget: the L-inf projection
against a linear program, minimal adversarials of linear models, the attack's contract on a
small seeded CNN, bad inputs."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from pellucid.errors import InvalidInputError
from pellucid.robust import ATTACKS, run_attack, within_budget
from pellucid.robust.budgets import BUDGETS
from pellucid.robust.fab import fab_t_native, fab_targeted, project_linf_hyperplane

from test_robust_apgd_native import Counting, check_budget_run
from test_robust_apgd_native import _correct as _correct_images

scipy_optimize = pytest.importorskip("scipy.optimize")

NAME = "fab-t-native"


# --- the projection against a linear program -----------------------------------------------------

def _lp_radius(w, c, lo, hi):
    """``min r s.t. w.d = c, -r <= d_i <= r, lo <= d <= hi`` by HiGHS; ``inf`` when infeasible."""
    n = len(w)
    eye, ones = np.eye(n), np.ones((n, 1))
    done = scipy_optimize.linprog(np.r_[np.zeros(n), 1.0], A_ub=np.block([[eye, -ones], [-eye, -ones]]),
                                  b_ub=np.zeros(2 * n), A_eq=np.r_[w, 0.0][None], b_eq=[c],
                                  bounds=[*zip(lo, hi), (0, None)], method="highs")
    assert done.status in (0, 2), done.message  # solved or infeasible
    return done.fun if done.status == 0 else float("inf")


def _lp_closest_reach(w, c, lo, hi):
    """``max sign(c) w.d`` over the box alone (how close to the hyperplane the box gets)."""
    s = 1.0 if c >= 0 else -1.0
    done = scipy_optimize.linprog(-s * np.asarray(w), bounds=list(zip(lo, hi)), method="highs")
    return -done.fun


def _projection_cases(seed=0, n=60, dim=12):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, dim, generator=g, dtype=torch.float64)
    x[:, :3] = (x[:, :3] > 0.5).double()  # pixels at the box's bounds: lo = 0 or hi = 0
    w = torch.randn(n, dim, generator=g, dtype=torch.float64)
    w[::5, 4:7] = 0  # some zero weights
    c = torch.randn(n, generator=g, dtype=torch.float64) * torch.linspace(0.01, 10, n, dtype=torch.float64)
    w[0], c[0] = 0, 0  # w = 0, c = 0: d = 0, feasible
    w[1], c[1] = 0, 0.5  # w = 0, c != 0: infeasible
    c[2] = 0  # c = 0 with w != 0: d = 0
    c[3] = -50.0  # far beyond the box: infeasible
    return w, c, -x, 1 - x


def test_the_projection_is_the_linear_programs_minimum_and_reports_infeasibility():
    w, c, lo, hi = _projection_cases()
    d, feasible = project_linf_hyperplane(w, c, lo, hi)
    assert d.shape == w.shape and d.dtype == w.dtype and feasible.dtype == torch.bool
    radius = [_lp_radius(*(t[i].numpy() for t in (w, c, lo, hi))) for i in range(len(w))]
    radius = torch.tensor(radius, dtype=torch.float64)
    assert torch.equal(feasible, torch.isfinite(radius))
    assert 5 < int((~feasible).sum()) < len(w) - 20  # both kinds, in numbers
    assert not feasible[1] and not feasible[3] and feasible[0] and feasible[2]
    assert torch.all(d >= lo - 1e-12) and torch.all(d <= hi + 1e-12)  # always inside the box
    ok = feasible
    torch.testing.assert_close((w * d).sum(1)[ok], c[ok], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(d.abs().amax(1)[ok], radius[ok], rtol=1e-7, atol=1e-9)
    assert torch.equal(d[0], torch.zeros_like(d[0])) and torch.equal(d[2], torch.zeros_like(d[2]))
    # infeasible: the move that gets closest to the hyperplane, with no coordinate moved in vain
    for i in torch.nonzero(~feasible).squeeze(1).tolist():
        reach = _lp_closest_reach(*(t[i].numpy() for t in (w, c, lo, hi)))
        assert float(torch.sign(c[i]) * (w[i] * d[i]).sum()) == pytest.approx(reach, rel=1e-9, abs=1e-12)
        assert torch.all(d[i][w[i] == 0] == 0)
    assert torch.equal(d[1], torch.zeros_like(d[1]))


def test_the_projection_on_the_edge_of_feasibility_and_in_float32():
    w, _, lo, hi = (t[4:] for t in _projection_cases(seed=1, n=12))  # rows with w != 0
    n = len(w)
    top = (w.abs() * torch.where(w > 0, hi, -lo)).sum(1)  # the largest w.d the box allows
    bottom = -(w.abs() * torch.where(w < 0, hi, -lo)).sum(1)  # the smallest
    c = torch.cat([top * (1 - 1e-9), bottom * (1 - 1e-9), top * (1 + 1e-6)])
    ww, ll, hh = (torch.cat([t, t, t]) for t in (w, lo, hi))
    d, feasible = project_linf_hyperplane(ww, c, ll, hh)
    assert feasible[:2 * n].all() and not feasible[2 * n:].any()
    assert torch.all(d >= ll - 1e-12) and torch.all(d <= hh + 1e-12)
    torch.testing.assert_close((ww * d).sum(1)[:2 * n], c[:2 * n], rtol=1e-9, atol=1e-10)
    # float32, shaped as images: the float64 answer up to float32 rounding
    w, c, lo, hi = _projection_cases(seed=2, n=40, dim=16)
    d64, f64 = project_linf_hyperplane(w, c, lo, hi)
    shape = (40, 1, 4, 4)
    d32, f32 = project_linf_hyperplane(*(t.float().view(shape) for t in (w,)), c.float(),
                                       lo.float().view(shape), hi.float().view(shape))
    assert d32.shape == shape and d32.dtype == torch.float32
    clear = (f64 == f32)
    assert clear.sum() >= 38
    torch.testing.assert_close(d32.flatten(1)[clear].double(), d64[clear], rtol=1e-4, atol=1e-5)


# --- linear models: the minimal adversarial ------------------------------------------------------

class Linear(nn.Module):
    """Logits ``x W + b`` on 1x4x4 images (float64)."""

    def __init__(self, k=4, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(16, k, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(k, generator=g, dtype=torch.float64))

    def forward(self, x):
        return x.flatten(1) @ self.W + self.b


def _linear_case(k=4, n=20):
    model = Linear(k)
    x = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    W, b = model.W.detach().numpy(), model.b.detach().numpy()
    radius = np.full((n, k), np.inf)  # the LP minimum of ||d|| reaching z_s >= z_y, per class s
    for i in range(n):
        xi, yi = x[i].flatten().numpy(), int(y[i])
        for s in set(range(k)) - {yi}:
            w = W[:, s] - W[:, yi]
            radius[i, s] = _lp_radius(w, -(xi @ w + b[s] - b[yi]), -xi, 1 - xi)
    return model, x, y, torch.tensor(radius)


def test_on_a_linear_model_fab_finds_the_minimal_adversarial_in_few_steps():
    model, x, y, radius = _linear_case()
    best, target = radius.min(1)  # the closest class: no adversarial is closer than best
    # with a tiny overshoot the first projection is the minimum (FAB is exact on linear models)
    points, norms = fab_targeted(model, x, y, target, eps=1.0, steps=1, eta=1 + 1e-4,
                                 stop_within_eps=False)
    assert torch.all(norms >= best * (1 - 1e-9))
    torch.testing.assert_close(norms, best * (1 + 1e-4), rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        assert torch.all(model(points).argmax(1) != y)
    torch.testing.assert_close((points - x).flatten(1).abs().amax(1), norms)
    # AutoAttack's parameters: eta = 1.05 overshoots, so the backward steps settle within 1 % of
    # the minimum (about 1.005 to 1.009 times it here) after three iterations
    _, norms = fab_targeted(model, x, y, target, eps=1.0, steps=3, stop_within_eps=False)
    assert torch.all(norms >= best * (1 - 1e-9)) and torch.all(norms <= best * 1.01)


class Tie(nn.Module):
    """Logits ``(0, v.(x - x_tie))``: exactly tied at ``x_tie``, where the argmax says class 0."""

    def __init__(self, x_tie):
        super().__init__()
        self.v = nn.Parameter(torch.randn(16, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
        self.c = nn.Parameter(-(x_tie.flatten(1) @ self.v.detach()))

    def forward(self, x):
        s = x.flatten(1) @ self.v + self.c
        return torch.stack([torch.zeros_like(s), s], 1)


def test_an_iterate_exactly_on_the_boundary_still_steps_across():
    """A tie settled for the true class projects to d = 0 (g = 0); FAB would stall there. The
    tie slack (a few dozen units in the last place of the logits) makes it step across."""
    x = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    model = Tie(x)
    with torch.no_grad():
        z = model(x)
    assert float(z[0, 1]) == 0.0 and int(z.argmax(1)) == 0  # tied, classified as 0
    y = torch.zeros(1, dtype=torch.long)
    points, norms = fab_targeted(model, x, y, 1 - y, eps=0.1, steps=3)
    assert 0 < float(norms[0]) < 1e-9
    with torch.no_grad():
        assert int(model(points).argmax(1)) == 1


def test_fab_t_breaks_a_linear_model_exactly_where_the_minimum_is_within_eps():
    model, x, y, radius = _linear_case(k=4, n=40)
    best = radius.min(1).values
    eps = float(best.median())
    run = run_attack(NAME, model, x, y, eps=eps, steps=20)
    with torch.no_grad():
        broken = model(run.adversarial).argmax(1) != y
    clear = (best - eps).abs() > 0.02 * eps
    assert clear.sum() > 30
    assert torch.equal(broken[clear], (best < eps)[clear])
    assert bool(within_budget(run.adversarial - x, eps, "linf").all())
    row = run.stages[0]
    assert sum(row["broken_per_target"].values()) + row["broken_by_projection"] == int(broken.sum())
    assert row["targets"] == 3
    assert row["median_linf_broken"] <= eps


# --- the attack's contract on a small CNN --------------------------------------------------------

class CNN(nn.Module):
    """A seeded ``K``-class CNN on 1x8x8 images."""

    def __init__(self, k=10, seed=0):
        super().__init__()
        torch.manual_seed(seed)  # nn's initialisers draw from the global generator
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(8 * 4 * 4, k))

    def forward(self, x):
        return self.net(x) * 8


def _correct(model, n=24, seed=3, dtype=torch.float32):
    return _correct_images(model, n, seed, dtype)


EPS = 0.05  # this CNN: FAB-T breaks some images, not all


def test_outputs_are_inside_the_ball_and_the_box_and_the_broken_ones_misclassified():
    model = CNN()
    x, y = _correct(model)
    y[:3] = (y[:3] + 1) % 10  # wrong labels: broken already, returned unchanged
    run = run_attack(NAME, model, x, y, eps=EPS, steps=30, generator=torch.Generator().manual_seed(0))
    out = run.adversarial
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float((out - x).abs().max()) <= EPS + 1e-6 and bool(within_budget(out - x, EPS, "linf").all())
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.equal(out[:3], x[:3])
    with torch.no_grad():
        wrong = model(out).argmax(1) != y
    broken = int(wrong[3:].sum())
    assert 0 < broken < len(x) - 3
    row = run.stages[0]  # counted = misclassified
    assert sum(row["broken_per_target"].values()) + row["broken_by_projection"] == broken
    assert run.stages[0]["attacked"] == len(x) and run.stages[0]["targets"] == 9


def test_the_same_generator_gives_the_same_outputs_and_restarts_draw_from_it():
    model = CNN()
    x, y = _correct(model)
    outs, states = [], []
    for _ in range(2):
        g = torch.Generator().manual_seed(4)
        outs.append(run_attack(NAME, model, x, y, eps=EPS, steps=10, restarts=2, n_target_classes=2,
                               generator=g).adversarial)
        states.append(g.get_state())
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(states[0], torch.Generator().manual_seed(4).get_state())  # restart 2 drew


def test_one_restart_needs_no_generator_and_batches_are_attacked_alike():
    model = CNN()
    x, y = _correct(model)
    runs = [fab_t_native(model, x, y, eps=EPS, steps=10, n_target_classes=3, batch_size=size).adversarial
            for size in (1024, 1024, 5)]
    assert torch.equal(runs[0], runs[1])
    with torch.no_grad():
        broken = [model(out).argmax(1) != y for out in runs]
    # images are attacked independently; only rounding (another batch size, other kernels) differs
    assert int((broken[0] != broken[2]).sum()) <= 1


def test_float64_works_like_float32():
    model = CNN()
    x, y = _correct(model)
    out32 = fab_t_native(model, x, y, eps=EPS, steps=10, n_target_classes=3).adversarial
    model64 = CNN().double()
    out64 = fab_t_native(model64, x.double(), y, eps=EPS, steps=10, n_target_classes=3).adversarial
    assert out64.dtype == torch.float64
    assert bool(within_budget(out64 - x.double(), EPS, "linf").all())
    with torch.no_grad():
        broken32, broken64 = model(out32).argmax(1) != y, model64(out64).argmax(1) != y
    assert int((broken32 != broken64).sum()) <= 1  # the same images, up to rounding


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_like_on_the_cpu():
    model = CNN()
    x, y = _correct(model)
    cpu = fab_t_native(model, x, y, eps=EPS, steps=10, n_target_classes=3).adversarial
    gpu = fab_t_native(model.cuda(), x.cuda(), y.cuda(), eps=EPS, steps=10, n_target_classes=3).adversarial
    assert gpu.device.type == "cuda"
    with torch.no_grad():
        assert int(((model(gpu).argmax(1) != y.cuda()).cpu() != (model.cpu()(cpu).argmax(1) != y)).sum()) <= 1


def test_nothing_to_attack_takes_no_attack_step():
    model = Counting(CNN())
    x, y = _correct(model.model, 8)
    wrong = (y + 1) % 10
    run = fab_t_native(model, x, wrong, eps=EPS)  # every image misclassified already
    assert torch.equal(run.adversarial, x) and model.calls == 2  # the input check, the clean pass
    assert run.stages[0]["broken_per_target"] == {} and run.stages[0]["median_linf_broken"] is None
    model.calls = 0
    run = fab_t_native(model, x, y, eps=0.0)  # eps 0: nothing can be broken
    assert torch.equal(run.adversarial, x) and model.calls == 2


# --- bad inputs --------------------------------------------------------------------------------

def _four():
    model = CNN()
    return _correct(model, 4)


# another norm and a bad option: the native APGD tests' parametrisations cover fab-t-native too
# (tests/test_robust_apgd_native.py)


@pytest.mark.parametrize("eps", [float("nan"), -0.1, "0.1", float("inf")])
def test_a_bad_eps_raises_before_any_work(eps):
    x, y = _four()
    for call in (fab_t_native, lambda *a, **k: run_attack(NAME, *a, **k)):
        model = Counting(CNN())
        with pytest.raises(InvalidInputError, match="eps") as err:
            call(model, x, y, eps=eps)
        assert "\n" not in str(err.value), str(err.value)
        assert model.calls <= 1  # at most the registry's check of the inputs, no attack step


def test_an_empty_batch_gives_an_empty_result_or_a_one_line_error_through_the_registry():
    model = Counting(CNN())
    x, y = torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)
    run = fab_t_native(model, x, y, eps=0.1)
    assert run.adversarial.shape == (0, 1, 8, 8) and model.calls == 0
    with pytest.raises(InvalidInputError, match="non-empty batch") as err:
        run_attack(NAME, model, x, y, eps=0.1)
    assert "\n" not in str(err.value) and model.calls == 0


@pytest.mark.parametrize("bad, needle", [(float("nan"), "NaN or inf"), (1.5, "must lie in")])
def test_nan_or_out_of_range_images_are_a_one_line_error(bad, needle):
    x, y = _four()
    x[1, 0, 2, 2] = bad
    for call in (fab_t_native, lambda *a, **k: run_attack(NAME, *a, **k)):
        model = Counting(CNN())
        with pytest.raises(InvalidInputError) as err:
            call(model, x, y, eps=0.1)
        msg = str(err.value)
        assert msg.startswith(f"{NAME}: images") and needle in msg and "\n" not in msg, msg
        assert model.calls <= 1  # at most the registry's check of the inputs


# --- the native-standard budget --------------------------------------------------------------------

def test_the_native_standard_budget_is_the_reference_order_and_the_others_stay():
    assert [(s.attack, s.kwargs, s.white_box) for s in BUDGETS["native-standard"]] == [
        ("apgd-ce-native", {"steps": 100, "restarts": 1}, True),
        ("apgd-t-native", {"steps": 100, "restarts": 1, "n_target_classes": 9}, True),
        ("fab-t-native", {"steps": 100, "restarts": 1, "n_target_classes": 9}, True),
        ("square-native", {"queries": 5000, "restarts": 1}, False)]
    assert [s.attack for s in BUDGETS["native"]] == ["apgd-ce-native", "apgd-t-native", "square-native"]
    assert [s.attack for s in BUDGETS["standard"]] == ["apgd-ce", "apgd-dlr", "deepfool", "square"]
    for stage in BUDGETS["native-standard"]:
        ATTACKS.get(stage.attack).check_options(stage.kwargs)


def test_the_native_standard_budget_runs_end_to_end():
    model = CNN(seed=1)
    x, y = _correct(model, 8, seed=9)
    check_budget_run(model, x, y, 0.06, "native-standard",
                     ["apgd-ce-native", "apgd-t-native", "fab-t-native", "square-native"])


def test_the_cli_lists_fab_t_and_the_budget(monkeypatch, capsys):
    from pellucid.cli.main import build_parser

    monkeypatch.setenv("COLUMNS", "100000")
    with pytest.raises(SystemExit):
        build_parser(["evaluate"]).parse_args(["evaluate", "--help"])
    text = capsys.readouterr().out
    assert f"{NAME}: " in text and "native-standard = pellucid's own" in text
    flag = re.search(r"--n-target-classes INT\s+([^\n]*)", text)
    assert flag and "(default 9); applies to apgd-t-native, fab-t-native" in flag.group(1), flag
    for option, default in (("alpha-max", "0.1"), ("eta", "1.05"), ("beta", "0.9")):
        flag = re.search(rf"--{option} FLOAT\s+([^\n]*)", text)
        assert flag and f"(default {default}); applies to fab-t-native" in flag.group(1), flag
