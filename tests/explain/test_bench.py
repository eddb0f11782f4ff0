"""explain-bench: every cell is the metric of the method's attributions, and bad input fails early."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from pellucid.cli.main import main
from pellucid.errors import InvalidInputError
from pellucid.explain import create_explainer
from pellucid.explain.bench import explain_bench, mosaic_batch, summarise_scores
from pellucid.explain.metrics import create_metric


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3)).eval()


X = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
LABELS = torch.tensor([0, 1, 2, 0, 1, 2])


def test_each_cell_is_the_metric_of_the_methods_attributions():
    model = tiny_cnn()
    options = {"faithfulness_correlation": {"subset_size": 8, "n_draws": 10}}
    rows = explain_bench(model, X, LABELS, methods=["gradient", ("pullback", {"temperature": 0.5})],
                         metrics=["faithfulness_correlation", "deletion"], metric_options=options)
    assert [(r.method, r.metric) for r in rows] == [
        ("gradient", "faithfulness_correlation"), ("gradient", "deletion"),
        ("pullback", "faithfulness_correlation"), ("pullback", "deletion")]
    for row in rows:  # recomputed independently
        kwargs = {"temperature": 0.5} if row.method == "pullback" else {}
        attr = create_explainer(row.method, model, **kwargs).attribute(X, target=LABELS)
        scores = create_metric(row.metric, **options.get(row.metric, {}))(model, X, attr, LABELS)
        scores = getattr(scores, "auc", scores).double()
        assert row.mean == pytest.approx(float(scores.mean()), rel=1e-9)
        assert row.sem == pytest.approx(float(scores.std() / math.sqrt(len(scores))), rel=1e-9)
        assert row.n == 6 and row.n_nan == 0
    assert rows[2].options == {"temperature": 0.5}


def test_methods_that_rerun_the_explainer_get_the_scored_method():
    model = tiny_cnn()
    rows = explain_bench(model, X, LABELS, methods=["gradient", "pullback"], metrics=["max_sensitivity"])
    attr = create_explainer("pullback", model).attribute(X, target=LABELS)
    direct = create_metric("max_sensitivity")(model, X, attr, LABELS, explainer="pullback")
    assert rows[1].mean == pytest.approx(float(direct.double().mean()), rel=1e-9)
    assert rows[0].mean != rows[1].mean


def test_localisation_metrics_score_mosaics_resized_to_the_input():
    images, masks, targets = mosaic_batch(X, LABELS, 4, seed=0)
    assert images.shape == (4, 1, 8, 8) and masks.shape == (4, 1, 8, 8) and masks.dtype == torch.bool
    assert float(images.min()) >= float(X.min()) and float(images.max()) <= float(X.max())
    assert all(int(masks[i].sum()) == 32 for i in range(4))  # two of four 4 x 4 quadrants
    rows = explain_bench(tiny_cnn(), X, LABELS, methods=["gradient"], metrics=["focus"],
                         labels=LABELS, n_mosaics=4)
    assert rows[0].n == 4 and 0.0 <= rows[0].mean <= 1.0


def test_summary_leaves_nan_out_and_counts_it():
    mean, sem, n, n_nan = summarise_scores(torch.tensor([1.0, float("nan"), 3.0]))
    assert (mean, n, n_nan) == (2.0, 2, 1) and sem == pytest.approx(1.0)
    assert math.isnan(summarise_scores(torch.tensor([float("nan")]))[0])


@pytest.mark.parametrize("kwargs,message", [
    ({"methods": ["nope"]}, "unknown method"),
    ({"metrics": ["nope"]}, "unknown metric"),
    ({"methods": []}, "at least one"),
    ({"metric_options": {"nope": {}}}, "metric_options"),
    ({"metrics": ["focus"]}, "need labels"),
    ({"methods": [("pullback", "tau")]}, "name, options"),
])
def test_bad_arguments_raise_one_line_errors(kwargs, message):
    with pytest.raises(InvalidInputError, match=message) as info:
        explain_bench(tiny_cnn(), X, LABELS, **kwargs)
    assert "\n" not in str(info.value)


def test_bad_inputs_are_refused():
    with pytest.raises(InvalidInputError):
        explain_bench(tiny_cnn(), X[:0], None)
    with pytest.raises(InvalidInputError, match="NaN"):
        explain_bench(tiny_cnn(), X.masked_fill(X > 0.5, float("nan")), None)


# -- CLI ----------------------------------------------------------------------------------------

def test_cli_writes_table_and_figure(authors_dir, tmp_path, capsys):
    out, fig = tmp_path / "t.csv", tmp_path / "t.png"
    code = main(["explain-bench", "--model", str(authors_dir), "--n", "8", "--methods", "gradient",
                 "pullback", "--metrics", "deletion", "focus", "infidelity", "--mosaics", "2", "--out", str(out),
                 "--figure", str(fig), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # infidelity's Gaussian noise leaves [0, 1]: clipped to the model's domain, which it enforces
    assert [(r["method"], r["metric"]) for r in summary["rows"]] == [
        (m, k) for m in ("gradient", "pullback") for k in ("deletion", "focus", "infidelity")]
    assert all(r["n"] == (2 if r["metric"] == "focus" else 8) for r in summary["rows"])
    lines = out.read_text().splitlines()
    assert lines[0].startswith("method,metric,mean") and len(lines) == 7
    assert fig.read_bytes()[:4] == b"\x89PNG"



def test_explain_bench_no_progress_prints_no_rows_on_stderr(authors_dir, capsys):
    argv = ["explain-bench", "--model", str(authors_dir), "--n", "2", "--methods", "gradient",
            "--metrics", "max_sensitivity", "--json"]
    assert main(argv) == 0
    assert "gradient" in capsys.readouterr().err  # one line per finished row, by default
    assert main([*argv, "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and json.loads(captured.out.splitlines()[-1])["n"] == 2

def test_cli_lists_methods_and_metrics(capsys):
    assert main(["explain-bench", "--list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "pullback" in listing["methods"] and "infidelity" in listing["metrics"]


@pytest.mark.parametrize("args,message", [
    (["--methods", "nope"], "unknown 'nope'"),
    (["--metrics", "nope"], "unknown 'nope'"),
    (["--n", "1"], "--n"),
    (["--out", "table.txt"], "must end in one of .csv, .json"),
    (["--figure", "fig.csv"], "--figure"),
    (["--image", "missing.png", "other.png"], "missing.png"),
])
def test_cli_user_errors_exit_2_with_one_line(authors_dir, tmp_path, capsys, args, message):
    args = [a if not a.endswith((".txt", ".csv")) or a == "table.txt" else str(tmp_path / a) for a in args]
    args = [str(tmp_path / a) if a == "table.txt" else a for a in args]
    code = main(["explain-bench", "--model", str(authors_dir), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_cli_refuses_a_registered_name_without_images_and_untrained_models(capsys):
    assert main(["explain-bench", "--model", "lenet-mnist35"]) == 2
    assert "no trained weights" in capsys.readouterr().err
    assert main(["explain-bench", "--model", "no-such-model"]) == 2


def test_a_method_that_does_not_apply_gets_empty_cells_with_the_reason():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    rows = explain_bench(mlp, X, LABELS, methods=["grad-cam", "gradient"], metrics=["deletion"])
    assert rows[0].n == 0 and math.isnan(rows[0].mean) and "Conv2d" in rows[0].note
    assert rows[1].n == 6 and rows[1].note is None
    with pytest.raises(InvalidInputError, match="Conv2d"):
        explain_bench(mlp, X, LABELS, methods=["grad-cam"], metrics=["deletion"], skip_inapplicable=False)
