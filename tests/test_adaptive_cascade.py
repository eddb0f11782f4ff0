"""The adaptive budget's cascade: each stage only on the images still standing, every output in
the eps-ball and the value range, a superset of its base budget's breaks, its own record, and
one-line errors for bad options (API and CLI)."""

from __future__ import annotations

import json

import pytest
import torch

from pellucid.cli import main
from pellucid.errors import ConfigError, InvalidInputError
from pellucid.robust import evaluate_robustness, within_budget
from pellucid.robust.adaptive import adaptive_cascade
from pellucid.robust.apgd import apgd_checkpoints, apgd_objective
from pellucid.robust.adaptive import surrogate_objective
from pellucid.robust.budgets import BUDGETS, AdaptiveBudget, Stage
from pellucid.robust.raysearch import other_class_images, ray_search

from test_robust_art import ImageLinear, _closed_form_robust, _data

TINY_BASE = (Stage("apgd-ce", {"steps": 3}), Stage("square-native", {"queries": 20}, white_box=False))
TINY = dict(steps=4, restarts=2, temperatures="0.1,0.01", transfer_steps=3, decision_queries=30,
            queries=30)


@pytest.fixture(autouse=True)
def tiny_base_budgets(monkeypatch):
    """The base budgets' stages shrunk to a few steps and queries (the logic is what is tested)."""
    for name in ("standard", "standard-native"):
        monkeypatch.setitem(BUDGETS, name, TINY_BASE)


@pytest.fixture(scope="module")
def sixteen(mnist35_test):
    return mnist35_test.images[:16], mnist35_test.labels[:16]


def test_apgd_checkpoints_follow_the_papers_schedule():
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert all(0 < w < 10 for w in apgd_checkpoints(10))


def test_apgd_reaches_the_linear_models_closed_form_worst_case():
    model, (x, y), eps = ImageLinear(), _data(), 0.15
    expected, z = _closed_form_robust(model, x, y, eps)
    points, margins = apgd_objective(surrogate_objective(model, "margin", 0.1), x, y, eps=eps, steps=20,
                                     generator=torch.Generator().manual_seed(0))
    clear = z.abs() > 1e-3
    held = model(points).argmax(1) == y
    assert torch.equal(held[clear] & (model(x).argmax(1) == y)[clear], expected[clear])
    assert within_budget(points - x, eps, "linf").all() and points.min() >= 0 and points.max() <= 1


def test_ray_search_stays_in_the_ball_and_in_its_query_budget():
    class Counting(ImageLinear):
        seen = 0

        def forward(self, x):
            Counting.seen += len(x)
            return super().forward(x)

    model, (x, y), eps = Counting(), _data(24), 0.15
    ok = model(x).argmax(1) == y
    x, y = x[ok], y[ok]
    toward = other_class_images(x, y, x, y, model(x).argmax(1))
    Counting.seen = 0
    points, radius = ray_search(model, x, y, toward, eps=eps, queries=40)
    assert Counting.seen <= len(x) * (40 + 12)  # + one bisection in progress
    assert within_budget(points - x, eps, "linf").all() and points.min() >= 0 and points.max() <= 1
    broken = radius <= eps
    assert torch.equal(model(points).argmax(1) != y, broken)
    expected, _ = _closed_form_robust(model, x, y, eps)
    assert not (broken & expected).any()  # never below the true minimal radius


def _run(model, x, y, eps=0.3, seed=0, trace=None, **budget):
    return adaptive_cascade(model, x, y, eps=eps, budget=AdaptiveBudget(**{**TINY, **budget}),
                            generator=torch.Generator().manual_seed(seed), trace=trace)


def test_cascade_never_attacks_a_broken_image_and_keeps_every_output_in_the_ball(authors_model, sixteen):
    x, y = sixteen
    seen = []
    run = _run(authors_model, x, y, eps=0.42, trace=lambda name, idx, out: seen.append((name, idx, out)))
    by = run.info["broken_by_image"]
    base_names = {s.attack for s in TINY_BASE} | {"clean"}
    broken = {i for i, name in enumerate(by) if name in base_names}
    assert [name for name, _, _ in seen] == ["surrogate-apgd-margin", "surrogate-apgd-evidence",
                                             "surrogate-apgd-feature", "smooth-transfer",
                                             "ray-search", "square-final"][:len(seen)]
    for name, idx, out in seen:
        assert not broken & set(idx.tolist()), name  # only images still standing
        assert within_budget(out - x[idx], 0.42, "linf").all() and out.min() >= 0 and out.max() <= 1
        broken |= {i for i in idx.tolist() if by[i] == name}
    rows = run.stages[len(TINY_BASE):]
    assert [r["attacked"] for r in rows] == [len(idx) for _, idx, _ in seen]
    for a, b in zip(run.stages, run.stages[1:]):  # base stages too: each sees what is left
        assert b["attacked"] == a["attacked"] - a["broken"]
    assert sum(r["broken"] for r in run.stages) + by.count("clean") == sum(b is not None for b in by)
    assert sum(run.info["broken_by"].values()) == sum(b is not None for b in by)
    assert any(r["broken"] for r in rows)  # the adaptive stages broke something at this eps
    assert within_budget(run.adversarial - x, 0.42, "linf").all()
    held = torch.tensor([b is None for b in by])
    assert torch.equal(authors_model(run.adversarial).argmax(1) == y, held)


def test_a_stage_output_outside_the_ball_is_a_bug_that_raises(monkeypatch, authors_model, sixteen):
    import pellucid.robust.adaptive as adaptive

    def too_far(model, x, y, toward, *, eps, **kwargs):
        return (x + 2 * eps).clamp(0, 1), torch.full((len(x),), float("inf"))

    monkeypatch.setattr(adaptive, "ray_search", too_far)
    x, y = sixteen
    with pytest.raises(AssertionError, match="ray-search returned .* outside the eps-ball"):
        _run(authors_model, x[:6], y[:6], losses="margin", transfer_steps=0)


@pytest.mark.parametrize("base", ["standard-native", "standard"])
def test_adaptive_breaks_a_superset_of_its_base_budget(authors_model, sixteen, base):
    x, y = sixteen
    standard = evaluate_robustness(authors_model, x, y, attack="autoattack", eps=0.42, budget=base)
    adaptive = evaluate_robustness(authors_model, x, y, attack="autoattack", eps=0.42,
                                   budget=AdaptiveBudget(**TINY, base_budget=base))
    assert (~standard.robust).sum() >= 3  # the base budget breaks some: the inclusion is not empty
    assert not (adaptive.robust & ~standard.robust).any()
    assert adaptive.stages[:len(TINY_BASE)] != [] and [
        {k: v for k, v in r.items() if k != "seconds"} for r in adaptive.stages[:len(TINY_BASE)]] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in standard.stages]
    assert adaptive.info["budget"] == "adaptive" and adaptive.info["base_budget"] == base


def test_generic_models_run_the_losses_that_need_no_white_box_layers():
    model, (x, y), eps = ImageLinear(), _data(), 0.15
    run = _run(model, x, y, eps=eps)
    names = [r["attack"] for r in run.stages]
    assert "surrogate-apgd-margin" in names and "surrogate-apgd-evidence" not in names
    assert "smooth-transfer" not in names and names[-1] == "square-final"
    expected, _ = _closed_form_robust(model, x, y, eps)
    held = torch.tensor([b is None for b in run.info["broken_by_image"]])
    assert not (held & ~expected).any()  # nothing stands that the closed form breaks


def test_transfer_from_another_model_directory(tmp_path, authors_model, sixteen):
    from pellucid.models import save_model
    from pellucid.models.lenet import LeNet

    torch.manual_seed(0)
    save_model(LeNet(), tmp_path / "lenet", "lenet-mnist35")
    x, y = sixteen
    run = _run(authors_model, x[:6], y[:6], losses="margin", transfer_from=str(tmp_path / "lenet"))
    row = next(r for r in run.stages if r["attack"] == "transfer")
    assert row["source"] == str(tmp_path / "lenet") and row["white_box"] is False
    save_model(LeNet(n_classes=10), tmp_path / "lenet10", "lenet-mnist35", kwargs={"n_classes": 10})
    with pytest.raises(InvalidInputError, match="10 outputs"):
        _run(authors_model, x[:6], y[:6], transfer_from=str(tmp_path / "lenet10"))


@pytest.mark.parametrize("field,value,needle", [
    ("restarts", 0, ">= 1"), ("steps", 0, ">= 1"), ("queries", 0, ">= 1"), ("transfer_steps", -1, ">= 0"),
    ("temperatures", "0.1,-1", "> 0"), ("temperatures", "nan", "> 0"), ("temperatures", "", "non-empty"),
    ("temperatures", (0.0,), "> 0"), ("temperatures", "abc", "> 0"), ("losses", "margin,bogus", "bogus"),
    ("base_budget", "fast", "standard"), ("square_restarts", 0, ">= 1"), ("transfer_from", " ", "model"),
])
def test_bad_adaptive_options_are_one_line_errors(field, value, needle):
    with pytest.raises(ConfigError) as err:
        AdaptiveBudget(**{field: value})
    msg = str(err.value)
    assert needle in msg and field in msg and "\n" not in msg, msg


def test_the_adaptive_budget_is_an_linf_budget(authors_model, sixteen):
    x, y = sixteen
    with pytest.raises(InvalidInputError, match="L-inf"):
        evaluate_robustness(authors_model, x, y, attack="autoattack", eps=0.3, norm="l2",
                            budget="adaptive")


def test_the_adaptive_record_is_kept_apart_from_the_standard_one(authors_dir):
    from pellucid.report.evaluation import evaluate_run

    standard = evaluate_run(authors_dir, attack="autoattack", options={"budget": "standard"}, limit=6,
                            check_limit=6)
    before = standard.record.read_text()
    adaptive = evaluate_run(authors_dir, attack="autoattack",
                            options={"budget": AdaptiveBudget(**TINY, base_budget="standard")},
                            limit=6, check_limit=6)
    assert adaptive.record != standard.record and standard.record.read_text() == before
    assert standard.record.name.startswith("autoattack-standard-")
    assert adaptive.record.name.startswith("autoattack-adaptive-")
    record = json.loads(adaptive.record.read_text())
    assert len(record["per_image"]["broken_by"]) == 6
    summary = record["summary"]
    assert summary["budget"] == "adaptive" and "broken_by_image" not in summary
    assert summary["options"]["budget"]["temperatures"] == [0.1, 0.01]
    diagnostics = summary["adaptive_diagnostics"]
    assert diagnostics["n"] == 6 and {"clean", "adversarial"} == set(diagnostics["gates"])
    assert set(diagnostics["gradient_norms"]["clean"]) == {"input", "pixels", "conv", "affine", "logits"}
    assert diagnostics["accuracy_vs_eps"][-1]["robust_accuracy"] == 0.0
    assert summary["checks"]["adaptive_unbounded"]["passed"] is True
    assert adaptive.summary["robust_accuracy"] <= standard.summary["robust_accuracy"]


# --------------------------------------------------------------------------------------- CLI

def test_cli_budget_adaptive_runs_the_cascade_with_progress_and_json(authors_dir, capsys):
    argv = ["evaluate", str(authors_dir), "--budget", "adaptive", "--limit", "5", "--check-limit", "5",
            "--steps", "3", "--restarts", "1", "--queries", "20", "--transfer-steps", "2",
            "--decision-queries", "20", "--losses", "margin", "--temperatures", "0.05", "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out.strip().splitlines()[-1])
    assert out["attack"] == "autoattack" and out["budget"] == "adaptive" and out["n"] == 5
    assert out["options"]["budget"]["steps"] == 3 and out["options"]["budget"]["losses"] == ["margin"]
    assert "adaptive surrogate-apgd-margin: attacked" in captured.err
    assert out["record"].split("/")[-1].startswith("autoattack-adaptive-linf-eps0.3-n5-")


def test_cli_budget_without_attack_means_autoattack_and_the_default_is_unchanged(authors_dir, capsys):
    assert main(["evaluate", str(authors_dir), "--budget", "standard", "--limit", "4",
                 "--check-limit", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["attack"] == "autoattack" and out["budget"] == "standard"
    assert main(["evaluate", str(authors_dir), "--limit", "4", "--steps", "2", "--no-checks",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["attack"] == "pgd" and "budget" not in out


@pytest.mark.parametrize("argv,needle", [
    (["--budget", "fast"], "--budget"),
    (["--budget", "adaptive", "--restarts", "0"], "--restarts"),
    (["--budget", "adaptive", "--temperatures", "-1"], "temperatures"),
    (["--budget", "adaptive", "--temperatures", "nan"], "temperatures"),
    (["--budget", "adaptive", "--temperatures", "0"], "temperatures"),
    (["--budget", "adaptive", "--losses", "bogus"], "losses"),
    (["--budget", "adaptive", "--base-budget", "fast"], "--base-budget"),
    (["--budget", "adaptive", "--norm", "l2"], "L-inf"),
    (["--budget", "adaptive", "--transfer-from", "/definitely/not/here"], "does not exist"),
    (["--temperatures", "0.1"], "--temperatures applies to --budget adaptive"),
    (["--attack", "autoattack", "--budget", "standard", "--losses", "margin"], "--losses applies"),
    (["--attack", "pgd", "--budget", "adaptive"], "--budget does not apply to pgd"),
])
def test_cli_bad_adaptive_options_exit_2_with_one_line(authors_dir, capsys, argv, needle):
    assert main(["evaluate", str(authors_dir), "--limit", "4", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err, err
