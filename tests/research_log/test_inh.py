"""Incremental Neural Hashing: greedy set cover, thresholds, fit, pruning, hashing, save/load."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pellucid.errors import CheckpointError, InvalidInputError
from pellucid.nn.disjunctive.hashing import (IncrementalNeuralHashing, candidate_coverage, fit_inh, greedy_set_cover,
                             precision_thresholds, prune_inh, quantile_thresholds, tune_inh)


def reference_set_cover(cover: torch.Tensor) -> list[int]:
    """Textbook greedy set cover with Python sets: the set with most uncovered elements, the
    lowest index on ties, until no set adds an element."""
    sets = [set(torch.nonzero(row).flatten().tolist()) for row in cover]
    uncovered = set(range(cover.shape[1]))
    chosen = []
    while True:
        gains = [len(s & uncovered) for s in sets]
        if not gains or max(gains) == 0:
            return chosen
        best = gains.index(max(gains))  # first maximum: the lowest index
        chosen.append(best)
        uncovered -= sets[best]


def blobs(n_per_class: int, n_classes: int, dim: int, spread: float, seed: int):
    """Gaussian blobs whose centres lie ``spread`` apart on average: close enough to overlap."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, dim, generator=g) * spread
    y = torch.arange(n_classes).repeat_interleave(n_per_class)
    x = centres[y] + torch.randn(len(y), dim, generator=g)
    return x.double(), y


# -- greedy set cover -----------------------------------------------------------------------------

@pytest.mark.parametrize("sets,elements,density", [(1, 1, 0.5), (7, 7, 0.3), (30, 30, 0.1),
                                                    (40, 25, 0.2), (25, 60, 0.05), (50, 50, 0.5)])
def test_greedy_set_cover_equals_python_reference(sets, elements, density):
    g = torch.Generator().manual_seed(sets * 1000 + elements)
    for _ in range(20):
        cover = torch.rand(sets, elements, generator=g) < density
        assert greedy_set_cover(cover).tolist() == reference_set_cover(cover)


def test_greedy_set_cover_ties_and_degenerate_matrices():
    # sets 1 and 2 both cover 2 elements: the lower index wins; then 0, 2 and 3 each add one
    cover = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 1]], dtype=torch.bool)
    assert greedy_set_cover(cover).tolist() == [1, 0, 2] == reference_set_cover(cover)
    assert greedy_set_cover(torch.zeros(3, 4, dtype=torch.bool)).tolist() == []
    assert greedy_set_cover(torch.zeros(0, 0, dtype=torch.bool)).tolist() == []
    with pytest.raises(InvalidInputError, match="bool"):
        greedy_set_cover(torch.ones(2, 2))


# -- thresholds -----------------------------------------------------------------------------------

def test_precision_and_quantile_thresholds_match_loop_references():
    g = torch.Generator().manual_seed(1)
    match = torch.randn(50, 7, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (50,), generator=g)
    classes = torch.tensor([0, 1, 2, 0, 1, 2, 1])
    t = precision_thresholds(match, labels, classes, 1e-3)
    for s in range(7):
        assert t[s] == max(match[i, s] for i in range(50) if labels[i] != classes[s]) + 1e-3
    for percent in (2, 10, 33.3, 50):
        k = math.floor(percent * 50 / 100)
        tq = quantile_thresholds(match, percent, 1e-3)
        for s in range(7):
            assert tq[s] == sorted(match[:, s].tolist(), reverse=True)[k] + 1e-3
            assert int((match[:, s] >= tq[s]).sum()) <= k
    # no input of another class / everything may match: the lowest finite value (fires on all)
    floor = torch.finfo(torch.float64).min
    assert precision_thresholds(match[:, :1], torch.zeros(50, dtype=torch.long),
                                torch.zeros(1, dtype=torch.long), 1e-3).item() == floor
    assert (quantile_thresholds(match, 100, 1e-3) == floor).all()


def test_slots_have_full_precision_on_the_batch_they_were_fit_on():
    x, y = blobs(60, 4, 5, 1.5, seed=2)
    layer = IncrementalNeuralHashing(5, 4, similarity="cosine").double()
    fit_inh(layer, x, y, batch_size=len(x), max_passes=1)  # one pass, one batch
    fires = layer.fires(x)
    other = y[:, None] != layer.slot_classes[None, :]
    assert layer.n_slots > 1 and not (fires & other).any()
    # and the lowest such thresholds: the closest input of another class sits eps below
    closest = torch.where(other, layer.match(x), -torch.inf).amax(0)
    torch.testing.assert_close(layer.thresholds - 1e-4, closest, rtol=0, atol=1e-12)


def test_candidate_coverage_is_the_definition():
    x, y = blobs(20, 3, 4, 1.0, seed=3)
    layer = IncrementalNeuralHashing(4, 3, similarity="l2").double()
    z = layer.embed(x)
    cand = torch.arange(0, 60, 2)
    cover, t = candidate_coverage(layer, z, y, cand, 1e-4)
    dist = torch.cdist(z, z)
    for a, i in enumerate(cand.tolist()):
        assert t[a] == (-dist[i][y != y[i]]).max() + 1e-4
        for b, j in enumerate(cand.tolist()):
            assert bool(cover[a, b]) == (y[i] == y[j] and -dist[i, j] > t[a])


# -- fit ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("similarity,dim", [("l2", 2), ("cosine", 8), ("centred-cosine", 8)])
def test_fit_classifies_every_training_point(similarity, dim):
    x, y = blobs(80, 5, dim, 3.0 if dim == 2 else 0.8, seed=4)
    layer = IncrementalNeuralHashing(dim, 5, similarity=similarity).double()
    rows = fit_inh(layer, x, y, batch_size=100, max_passes=20,
                   generator=torch.Generator().manual_seed(0))
    assert rows[-1]["new_slots"] == 0 and rows[-1]["raised_thresholds"] == 0  # converged
    assert (layer(x).argmax(1) == y).all()
    assert layer.n_slots < len(x) // 2  # the blobs overlap, yet the slots compress them
    # the final thresholds keep precision 1 on the whole training set
    assert not (layer.fires(x) & (y[:, None] != layer.slot_classes[None, :])).any()


def test_class_scores_are_the_max_margin_of_each_class_and_differentiable():
    x, y = blobs(30, 3, 6, 1.0, seed=5)
    layer = IncrementalNeuralHashing(6, 4).double()  # class 3 gets no slot
    fit_inh(layer, x, y)
    margins = layer.match(x) - layer.thresholds
    scores = layer(x)
    for k in range(3):
        assert torch.equal(scores[:, k], margins[:, layer.slot_classes == k].amax(1))
    assert (scores[:, 3] == torch.finfo(torch.float64).min).all()
    xg = x.clone().requires_grad_()
    layer(xg)[torch.arange(len(x)), y].sum().backward()
    assert torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0


def test_soft_class_scores_are_a_per_class_logsumexp_between_max_and_max_plus_tau_log_s():
    x, y = blobs(20, 3, 6, 1.0, seed=9)
    layer = IncrementalNeuralHashing(6, 4).double()  # class 3 gets no slot
    fit_inh(layer, x, y, threshold_mode="batch", batch_size=15)
    margins = layer.margins(x)
    hard = layer.class_scores(margins)
    for tau in (1.0, 0.1, 1e-3):
        soft = layer.class_scores(margins, tau)
        for k in range(3):  # slow reference: one logsumexp per class
            cols = margins[:, layer.slot_classes == k]
            assert torch.allclose(soft[:, k], tau * torch.logsumexp(cols / tau, 1), atol=1e-12)
            assert (soft[:, k] >= hard[:, k]).all()
            assert (soft[:, k] <= hard[:, k] + tau * math.log(cols.shape[1]) + 1e-12).all()
        assert torch.equal(soft[:, 3], hard[:, 3])  # a class without slots keeps the floor
    assert torch.allclose(layer.class_scores(margins, 1e-6), hard, atol=1e-5)


def test_tune_lowers_the_loss_keeps_slots_and_keys_stay_embedded():
    x, y = blobs(60, 3, 8, 0.7, seed=11)
    layer = IncrementalNeuralHashing(8, 3).double()
    fit_inh(layer, x, y, threshold_mode="batch", batch_size=30, generator=torch.Generator().manual_seed(0))
    before = float((layer(x).argmax(1) == y).double().mean())
    classes, n_slots = layer.slot_classes.clone(), layer.n_slots
    rows = tune_inh(layer, x, y, epochs=6, lr=0.05, temperature=0.05, batch_size=32,
                    generator=torch.Generator().manual_seed(0))
    assert [r["epoch"] for r in rows] == list(range(1, 7))
    assert rows[-1]["loss"] < rows[0]["loss"]
    after = float((layer(x).argmax(1) == y).double().mean())
    assert after >= before and after > 0.9
    assert layer.n_slots == n_slots and torch.equal(layer.slot_classes, classes)
    keys = layer.keys.detach()  # centred-cosine keys: mean 0 and unit norm, as fit_inh makes them
    assert torch.allclose(keys.mean(1), torch.zeros(n_slots, dtype=keys.dtype), atol=1e-12)
    assert torch.allclose(keys.norm(dim=1), torch.ones(n_slots, dtype=keys.dtype), atol=1e-12)
    assert layer.keys.dtype == torch.float64 and layer.thresholds.dtype == torch.float64


def test_tune_is_reproducible_with_a_seed():
    x, y = blobs(30, 2, 5, 0.8, seed=12)
    runs = []
    for _ in range(2):
        layer = IncrementalNeuralHashing(5, 2).double()
        fit_inh(layer, x, y, threshold_mode="batch", batch_size=20, generator=torch.Generator().manual_seed(1))
        tune_inh(layer, x, y, epochs=2, batch_size=16, generator=torch.Generator().manual_seed(3))
        runs.append((layer.keys.detach(), layer.thresholds))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_batch_threshold_mode_with_one_batch_equals_max_mode():
    x, y = blobs(40, 3, 6, 0.8, seed=6)
    a, b = (IncrementalNeuralHashing(6, 3).double() for _ in range(2))
    fit_inh(a, x, y, batch_size=len(x), threshold_mode="max", generator=torch.Generator().manual_seed(0))
    fit_inh(b, x, y, batch_size=len(x), threshold_mode="batch", generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.keys, b.keys) and torch.equal(a.slot_classes, b.slot_classes)
    torch.testing.assert_close(a.thresholds, b.thresholds, rtol=0, atol=1e-12)


def test_prune_keeps_coverage_and_training_accuracy():
    x, y = blobs(100, 4, 8, 0.7, seed=7)
    layer = IncrementalNeuralHashing(8, 4).double()
    fit_inh(layer, x, y, batch_size=50, max_passes=20, generator=torch.Generator().manual_seed(0))
    before = (layer.fires(x) & (layer.slot_classes[None, :] == y[:, None]))
    slots = layer.n_slots
    expected = []
    for k in range(4):  # the reference: greedy cover of each class's inputs by its slots
        idx = torch.nonzero(layer.slot_classes == k).flatten()
        expected += idx[reference_set_cover(before[y == k][:, idx].T)].tolist()
    keep = prune_inh(layer, x, y)
    assert keep.tolist() == sorted(expected) and layer.n_slots == len(keep) <= slots
    assert torch.equal(before[:, keep], layer.fires(x) & (layer.slot_classes[None, :] == y[:, None]))
    assert (layer(x).argmax(1) == y).all()


def test_fit_runs_in_float32_and_float64_alike():
    x, y = blobs(30, 3, 5, 1.0, seed=8)
    l32, l64 = IncrementalNeuralHashing(5, 3), IncrementalNeuralHashing(5, 3).double()
    fit_inh(l32, x.float(), y)
    fit_inh(l64, x, y)
    assert l32.keys.dtype == torch.float32 and l64.keys.dtype == torch.float64
    assert (l32(x.float()).argmax(1) == y).all() and (l64(x).argmax(1) == y).all()


# -- unsupervised ---------------------------------------------------------------------------------

@pytest.mark.parametrize("percent,batch", [(10, 300), (5, 100), (25, 60), (100, 300)])
def test_unsupervised_slots_match_at_most_x_percent(percent, batch):
    x, _ = blobs(100, 3, 6, 1.0, seed=9)
    layer = IncrementalNeuralHashing(6, None).double()
    rows = fit_inh(layer, x, max_match_percent=percent, batch_size=batch, max_passes=30,
                   generator=torch.Generator().manual_seed(0))
    assert rows[-1]["new_slots"] == 0 and rows[-1]["raised_thresholds"] == 0
    fires = layer.fires(x)
    assert fires.any(1).all()  # every input has a hash code that fires
    # the fit's batches (one random split, replayed): each slot fires for <= floor(X n_b / 100)
    split = torch.tensor_split(torch.randperm(len(x), generator=torch.Generator().manual_seed(0)),
                               math.ceil(len(x) / batch))
    assert len(split) > 1 or batch == len(x)
    for rows_b in split:
        assert (fires[rows_b].sum(0) <= math.floor(percent * len(rows_b) / 100)).all()
    assert (fires.sum(0) <= percent * len(x) / 100).all()
    assert torch.equal(layer.hash(x), layer(x).argmax(1)) and layer(x).shape == (len(x), layer.n_slots)
    assert (layer.slot_classes == -1).all()
    prune_inh(layer, x)
    assert layer.fires(x).any(1).all()


# -- save / load and the recipe -------------------------------------------------------------------

def test_save_load_round_trip_gives_identical_predictions(tmp_path):
    from pellucid.models import create_model, load_model, save_model

    g = torch.Generator().manual_seed(10)
    x, y = torch.rand(200, 1, 28, 28, generator=g), torch.randint(0, 10, (200,), generator=g)
    model = create_model("inh-mnist", similarity="cosine")
    fit_inh(model, x, y, batch_size=100)
    save_model(model, tmp_path / "m", "inh-mnist", {"n_slots": model.n_slots, "similarity": "cosine"},
               {"data": {"dataset": "mnist", "classes": None}})
    loaded, config = load_model(tmp_path / "m")
    assert loaded.n_slots == model.n_slots and config["kwargs"]["n_slots"] == model.n_slots
    assert torch.equal(loaded(x), model(x)) and (loaded(x).argmax(1) == y).all()
    # the wrong slot count cannot load the weights
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["kwargs"]["n_slots"] += 1
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_model(tmp_path / "m")


def test_recipe_writes_a_loadable_model_directory(tmp_path, monkeypatch):
    from pellucid.data import load_dataset
    from pellucid.models import load_model, read_config
    from pellucid.train import RECIPES
    from pellucid.train import inh as recipe
    from pellucid.train.checkpointing import read_metrics

    small = {split: load_dataset("mnist", split).subset(slice(0, n))
             for split, n in (("train", 500), ("test", 200))}
    monkeypatch.setattr(recipe, "load_dataset", lambda name, split, data_dir=None: small[split])
    cfg = recipe.InhMnistConfig(batch_size=250, threshold_mode="max", tune_epochs=0)
    out = tmp_path / "run"
    result = RECIPES.get("inh-mnist").run(cfg, out, progress=False)
    rows = read_metrics(out)
    # the precision-1 fit without the gradient stage classifies every training image correctly
    assert rows == result["epochs"] and rows[-1]["train_accuracy"] == 1.0
    assert {r["stage"] for r in rows} == {"fit"}
    model, config = load_model(out)
    assert config["data"] == {"dataset": "mnist", "classes": None, "class_names": list(small["test"].classes),
                              "n_train": 500, "n_test": 200}
    assert model.n_slots == rows[-1]["slots"] == config["kwargs"]["n_slots"]
    acc = float((model(small["test"].images).argmax(1) == small["test"].labels).float().mean())
    assert acc == rows[-1]["test_accuracy"] and acc > 0.5
    assert read_config(out)["train"]["batch_size"] == 250
    with pytest.raises(CheckpointError, match="already holds"):
        RECIPES.get("inh-mnist").run(cfg, out, progress=False)
    with pytest.raises(InvalidInputError, match="resume"):
        RECIPES.get("inh-mnist").run(cfg, tmp_path / "other", resume=True, progress=False)


# -- bad inputs -----------------------------------------------------------------------------------

def _layer(n_classes=3):
    return IncrementalNeuralHashing(4, n_classes)


X, Y = torch.rand(30, 4), torch.arange(30) % 3


def _fitted():
    layer = _layer()
    fit_inh(layer, X, Y)
    return layer


@pytest.mark.parametrize("call,message", [
    (lambda: fit_inh(_layer(None), X, max_match_percent=0), "max_match_percent"),
    (lambda: fit_inh(_layer(None), X, max_match_percent=-5), "max_match_percent"),
    (lambda: fit_inh(_layer(None), X, max_match_percent=100.5), "max_match_percent"),
    (lambda: fit_inh(_layer(None), X, max_match_percent=float("nan")), "max_match_percent"),
    (lambda: fit_inh(_layer(None), X), "max_match_percent"),
    (lambda: fit_inh(_layer(None), X, max_match_percent=2), "allows no match"),
    (lambda: fit_inh(_layer(None), X, Y, max_match_percent=10), "unsupervised"),
    (lambda: fit_inh(_layer(), X, Y, max_match_percent=10), "max_match_percent"),
    (lambda: fit_inh(_layer(), X[:0], Y[:0]), "empty"),
    (lambda: prune_inh(_layer(), X[:0], Y[:0]), "empty"),
    (lambda: fit_inh(_layer(), X, Y + 1), r"0\.\.2"),
    (lambda: fit_inh(_layer(), X, Y - 1), r"0\.\.2"),
    (lambda: fit_inh(_layer(), X, Y.float()), "integer"),
    (lambda: fit_inh(_layer(), X, Y[:5]), "labels"),
    (lambda: fit_inh(_layer(), X), "labels are required"),
    (lambda: fit_inh(_layer(), torch.rand(30, 5), Y), "in_features=4"),
    (lambda: fit_inh(_layer(), X.masked_fill(X > 0.9, float("nan")), Y), "NaN"),
    (lambda: fit_inh(_layer(), X, Y, batch_size=0), "batch_size"),
    (lambda: fit_inh(_layer(), X, Y, max_passes=0), "max_passes"),
    (lambda: fit_inh(_layer(), X, Y, eps=0), "eps"),
    (lambda: fit_inh(_layer(), X, Y, threshold_mode="min"), "threshold_mode"),
    (lambda: IncrementalNeuralHashing(4, 3, similarity="dot"), "similarity"),
    (lambda: IncrementalNeuralHashing(0, 3), "in_features"),
    (lambda: IncrementalNeuralHashing(4, 0), "n_classes"),
    (lambda: _layer()(torch.rand(2, 5)), "4 features"),
    (lambda: _layer(None).hash(X), "no slots"),
    (lambda: _layer(None).class_scores(X), "unsupervised"),
    (lambda: tune_inh(_layer(), X, Y), "no slots"),
    (lambda: tune_inh(_layer(None), X, None), "unsupervised"),
    (lambda: tune_inh(_fitted(), X, Y, epochs=0), "epochs"),
    (lambda: tune_inh(_fitted(), X, Y, lr=0), "lr"),
    (lambda: tune_inh(_fitted(), X, Y, lr=float("nan")), "lr"),
    (lambda: tune_inh(_fitted(), X, Y, temperature=0), "temperature"),
    (lambda: tune_inh(_fitted(), X, Y, temperature=-1.0), "temperature"),
    (lambda: tune_inh(_fitted(), X, Y, batch_size=0), "batch_size"),
    (lambda: tune_inh(_fitted(), X, Y.float()), "integer"),
    (lambda: tune_inh(_fitted(), X.masked_fill(X > 0.9, float("inf")), Y), "NaN or inf"),
])
def test_bad_inputs_raise_one_line_errors(call, message):
    with pytest.raises(InvalidInputError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_recipe_default_runs_fit_prune_and_gradient_stage(tmp_path, monkeypatch):
    from pellucid.data import load_dataset
    from pellucid.train import RECIPES
    from pellucid.train import inh as recipe
    from pellucid.train.checkpointing import read_metrics

    small = {split: load_dataset("mnist", split).subset(slice(0, n))
             for split, n in (("train", 600), ("test", 300))}
    monkeypatch.setattr(recipe, "load_dataset", lambda name, split, data_dir=None: small[split])
    cfg = recipe.InhMnistConfig(tune_epochs=3)
    RECIPES.get("inh-mnist").run(cfg, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run")
    assert [r["stage"] for r in rows][-3:] == ["tune"] * 3 and rows[0]["stage"] == "fit"
    assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
    assert rows[-1]["slots"] <= rows[-1]["fitted_slots"] and rows[-1]["test_accuracy"] > 0.7


def test_recipe_settings_are_checked():
    from pellucid.errors import ConfigError
    from pellucid.train.inh import InhMnistConfig

    for bad in ({"similarity": "dot"}, {"batch_size": 0}, {"threshold_mode": "min"}, {"eps": 0.0},
                {"tune_epochs": -1}, {"tune_lr": 0.0}, {"tune_temperature": -1.0},
                {"tune_batch_size": 0}):
        with pytest.raises(ConfigError):
            InhMnistConfig(**bad)
