"""Metric models, rejection protocol, centre search, and a train + evaluate smoke test (synthetic)."""

import json

import pytest
import torch
import torch.nn.functional as F

from pellucid.data import DATASETS, ImageDataset
from pellucid.errors import InvalidInputError
from pellucid.models import MODELS, create_model, load_model
from pellucid.models.metric import DictionaryMLP, METRICS
from pellucid.robust.rejection import (coverage_curve, rejection_counts, rejection_search,
                                       shifted_along_attack)
from pellucid.train.centre_search import centre_significance, noisy_centre_search

METRIC_MODELS = ["metric-mlp", "dictionary-mlp", "local-residual-mlp", "epsilon-highway-mlp", "metric-resnet20",
                 "metric-resnet20-fashion"]


def synthetic_images(n_per_class=40, classes=3, seed=0, noise=0.08):
    """Class prototypes = smooth dark blobs at different places; samples = prototype + noise."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    protos = torch.stack([0.8 * torch.exp(-((yy - 7 - 7 * k) ** 2 + (xx - 20 + 6 * k) ** 2) / 30)
                          for k in range(classes)])  # (K, 28, 28)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    x = (protos[labels] + noise * torch.randn(len(labels), 28, 28, generator=gen)).clamp(0, 1)
    return x.unsqueeze(1), labels


@pytest.mark.parametrize("name", METRIC_MODELS)
def test_every_metric_model_builds_and_runs(name):
    spec = MODELS.get(name)
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.rand(2, *spec.input_shape)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("metric", METRICS)
def test_metric_mlp_every_metric_trains_a_step(metric):
    torch.manual_seed(0)
    model = create_model("metric-mlp", metric=metric, hidden=5, inner_hidden=16)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    grads = [p.grad for p in model.metric.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_metric_mlp_rejects_bad_input():
    model = create_model("metric-mlp")
    with pytest.raises(InvalidInputError):
        model(torch.rand(2, 1, 27, 28))
    with pytest.raises(InvalidInputError):
        create_model("metric-mlp", metric="l-1")
    with pytest.raises(InvalidInputError):
        model(torch.full((2, 1, 28, 28), float("nan")))


def test_dictionary_forward_is_eps_softmax_times_values_with_zero_eps_row():
    torch.manual_seed(0)
    model = DictionaryMLP(hidden=4, in_features=6, classes=3, epsilon_mode="fixed", epsilon=2.0).double()
    x = torch.rand(5, 6, dtype=torch.float64)
    d = torch.cdist(x * 2 - 1, model.keys.detach())
    s = model.similarity.log_scale.exp().item()
    a = torch.softmax(-s * torch.cat([d, torch.full((5, 1), 2.0, dtype=torch.float64)], 1), 1)
    v = torch.cat([model.values.detach(), torch.zeros(1, 3, dtype=torch.float64)])
    torch.testing.assert_close(model(x), a @ v)
    torch.testing.assert_close(model.rejects(x), a.argmax(1) == 4)


def train_tiny_dictionary(seed=0):
    x, y = synthetic_images(seed=seed)
    torch.manual_seed(seed)
    model = DictionaryMLP(hidden=12, classes=3)
    rows = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:12]
    model.init_from_data_(x[rows], y[rows])
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(60):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), x, y


def test_epsilon_dictionary_rejects_random_noise_but_not_data():
    model, x, y = train_tiny_dictionary()
    test_x, test_y = synthetic_images(n_per_class=30, seed=1)
    assert float((model(test_x).argmax(1) == test_y).float().mean()) >= 0.95
    noise = torch.rand(500, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    assert float(model.rejects(noise).float().mean()) >= 0.99
    assert float(model.rejects(test_x).float().mean()) <= 0.05


def test_rejection_protocol_counts_and_search():
    model, _, _ = train_tiny_dictionary()
    x, y = synthetic_images(n_per_class=20, seed=3)
    trained = model.epsilon
    x_adv = shifted_along_attack(x, (x + 0.05).clamp(0, 1), alpha=3.0, bound=1.0)
    counts = rejection_counts(model, x, y, x_adv)
    with torch.no_grad():
        rej_adv, rej_clean = model.rejects(x_adv), model.rejects(x)
        wrong = model(x_adv).argmax(1) != y
    assert (counts.rejected, counts.failed, counts.x_rejected) == (
        int(rej_adv.sum()), int((wrong & ~rej_adv).sum()), int(rej_clean.sum()))
    assert counts.measure == (counts.failed + counts.x_rejected) / len(y)
    result = rejection_search(model, x, y, attack="fgsm", alphas=(1.0, 9.0),
                              attack_kwargs={"eps": 0.1}, refinements=1)
    assert model.epsilon == pytest.approx(trained)  # restored
    for r in result["bounds"]["1.0"].values():
        assert 0 <= r["measure"] <= 1 and r["epsilons_tried"] > 10
    # the search minimises: its best is no worse than the trained epsilon itself
    g = torch.Generator().manual_seed(0)
    from pellucid.robust.attacks import fgsm
    at_trained = rejection_counts(model, x, y, shifted_along_attack(x, fgsm(model, x, y, eps=0.1, generator=g), 9.0, 1.0))
    assert result["bounds"]["1.0"]["9.0"]["measure"] <= at_trained.measure + 1e-12


def test_rejection_search_noise_constraint_excludes_epsilons_that_let_noise_through():
    model, _, _ = train_tiny_dictionary()
    x, y = synthetic_images(n_per_class=10, seed=4)
    # half-noise "clean" inputs: their rejection pushes the measure-only search to a large epsilon
    x = 0.5 * x + 0.5 * torch.rand(x.shape, generator=torch.Generator().manual_seed(5))
    kw = dict(attack="fgsm", alphas=(3.0,), attack_kwargs={"eps": 0.1}, refinements=0,
              relative_grid=(0.5, 1.0, 2.0, 4.0, 8.0, 16.0), noise_samples=200)
    free = rejection_search(model, x, y, **kw)["bounds"]["1.0"]["3.0"]
    strict = rejection_search(model, x, y, min_noise_rejection=0.99, **kw)["bounds"]["1.0"]["3.0"]
    assert free["noise_rejection_rate"] < 0.99  # the protocol's minimum lets noise through here
    assert strict["noise_constraint_met"] and strict["noise_rejection_rate"] >= 0.99
    assert strict["epsilon"] < free["epsilon"]
    assert strict["measure"] >= free["measure"]  # same candidates (no refinement), fewer allowed
    # an impossible constraint is reported, not hidden
    model.set_epsilon(model.epsilon * 16)
    none = rejection_search(model, x, y, min_noise_rejection=1.0, **{**kw, "relative_grid": (1.0, 2.0)})
    assert none["bounds"]["1.0"]["3.0"]["noise_constraint_met"] is False
    with pytest.raises(InvalidInputError):
        rejection_search(model, x, y, min_noise_rejection=1.5, **kw)


def test_shift_along_attack_is_fixed_l2_step_in_signed_space():
    x = torch.full((2, 1, 4, 4), 0.5)
    xa = x.clone()
    xa[:, :, 0, 0] = 0.9
    out = shifted_along_attack(x, xa, alpha=0.3, bound=1.0)
    step = (out - x) * 2  # internal [-1, 1] units
    torch.testing.assert_close(step.flatten(1).norm(dim=1), torch.full((2,), 0.3))
    with pytest.raises(InvalidInputError):
        shifted_along_attack(x, xa, alpha=0.0, bound=1.0)


def test_coverage_curve():
    conf = torch.tensor([0.9, 0.1, 0.5, 0.7])
    correct = torch.tensor([True, False, True, False])
    c = coverage_curve(conf, correct)
    torch.testing.assert_close(c["selective_accuracy"], torch.tensor([1.0, 0.5, 2 / 3, 0.5], dtype=torch.float64))


def test_centre_search_improves_over_random_init():
    x, y = synthetic_images(n_per_class=60, noise=0.25, seed=4)
    tx, ty = synthetic_images(n_per_class=40, noise=0.25, seed=5)
    flat, tflat = x.flatten(1) * 2 - 1, tx.flatten(1) * 2 - 1
    out = noisy_centre_search(flat, y, tflat, ty, hidden=4, add=6, rounds=5, classes=3, seed=0)
    assert len(out["test_accuracy"]) == 6 and out["centres"].shape == (4, 784)
    assert out["test_accuracy"][-1] >= out["test_accuracy"][0]
    # significance: centre with all weight removed from the correct class's path scores > 0
    s = centre_significance(flat[:10], y[:10], out["centres"], F.one_hot(out["labels"], 3).float())
    assert s.shape == (4,) and bool((s >= 0).all())


def test_train_and_evaluate_smoke(tmp_path, monkeypatch, capsys):
    from pellucid.cli.main import main

    x, y = synthetic_images(n_per_class=30, seed=0)
    xt, yt = synthetic_images(n_per_class=10, seed=1)
    names = ("a", "b", "c")

    def fake_loader(split, data_dir=None):
        imgs, labels = (x, y) if split == "train" else (xt, yt)
        return ImageDataset(imgs, labels, names, "synthetic", torch.arange(len(labels)))

    monkeypatch.setitem(DATASETS._entries, "synthetic-blobs",
                        type(DATASETS._entries["fashion-mnist"])("synthetic-blobs", fake_loader, "test"))
    out = tmp_path / "dict"
    assert main(["train", "dictionary-mlp", "--dataset", "synthetic-blobs", "--hidden", "6", "--epochs", "2",
                 "--batch-size", "30", "--data-init", "--out", str(out), "--no-progress", "--json"]) == 0
    model, config = load_model(out)
    assert config["data"]["dataset"] == "synthetic-blobs"
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json", "--attack", "fgsm", "--eps", "0.1", "--rejection"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == 30 and 0 <= result["clean_accuracy"] <= 1 and "seconds" in result
    assert set(result["rejection"]["search"]["bounds"]["1.0"]) == {"1.0", "3.0", "9.0"}
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json", "--attack", "fgsm", "--eps", "0.1", "--rejection",
                 "--min-noise-rejection", "0.99"]) == 0
    search = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rejection"]["search"]
    assert search["min_noise_rejection"] == 0.99
    assert all(r["noise_rejection_rate"] >= 0.99 or not r["noise_constraint_met"]
               for r in search["bounds"]["1.0"].values())
    assert main(["evaluate", str(out), "--min-noise-rejection", "0.5"]) == 2  # needs --rejection
    out2 = tmp_path / "mlp"
    assert main(["train", "metric-mlp", "--dataset", "synthetic-blobs", "--hidden", "5", "--epochs", "4", "--lr", "0.01", "--batch-size", "15",
                 "--out", str(out2), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out2), "--json", "--attack", "fgsm", "--eps", "0.1"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["clean_accuracy"] > 0.5


@pytest.fixture
def synthetic_blobs(monkeypatch):
    """Register a tiny synthetic 3-class dataset as 'synthetic-blobs' for the recipes."""
    x, y = synthetic_images(n_per_class=30, seed=0)
    xt, yt = synthetic_images(n_per_class=10, seed=1)

    def fake_loader(split, data_dir=None):
        imgs, labels = (x, y) if split == "train" else (xt, yt)
        return ImageDataset(imgs, labels, ("a", "b", "c"), "synthetic", torch.arange(len(labels)))

    monkeypatch.setitem(DATASETS._entries, "synthetic-blobs",
                        type(DATASETS._entries["fashion-mnist"])("synthetic-blobs", fake_loader, "test"))
    return "synthetic-blobs"


@pytest.mark.parametrize("recipe", ["metric-mlp", "dictionary-mlp"])
def test_metric_recipe_killed_mid_run_resumes_bit_for_bit(recipe, synthetic_blobs, tmp_path, run_interrupted):
    from safetensors.torch import load_file

    from pellucid.errors import CheckpointError
    from pellucid.train import RECIPES

    entry = RECIPES.get(recipe)
    extra = {"metric": "l0.5"} if recipe == "metric-mlp" else {"data_init": True, "centre_lr_scale": 0.01}
    cfg = entry.config_type(dataset=synthetic_blobs, hidden=6, epochs=4, batch_size=15, lr=0.01, seed=3, **extra)
    entry.run(cfg, tmp_path / "whole", progress=False)

    run_interrupted(entry, cfg, tmp_path / "killed", at_call=3)  # epochs 1, 2 saved
    with pytest.raises(CheckpointError, match="already holds a training run"):
        entry.run(cfg, tmp_path / "killed", progress=False)
    if recipe == "metric-mlp":  # the cosine schedule spans the run: its length may not change
        with pytest.raises(CheckpointError, match="epochs=4"):
            entry.run(entry.config_type(**{**cfg.__dict__, "epochs": 6}), tmp_path / "killed",
                      resume=True, progress=False)
    result = entry.run(cfg, tmp_path / "killed", resume=True, progress=False)
    assert [r["epoch"] for r in result["epochs"]] == [1, 2, 3, 4]
    whole, resumed = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "killed" / "model.safetensors")
    assert whole.keys() == resumed.keys()
    for name in whole:
        assert torch.equal(whole[name], resumed[name]), name
    timing = {"epoch_seconds", "train_seconds"}
    strip = lambda path: [{k: v for k, v in json.loads(line).items() if k not in timing}  # noqa: E731
                          for line in path.read_text().splitlines()]
    assert strip(tmp_path / "whole" / "metrics.jsonl") == strip(tmp_path / "killed" / "metrics.jsonl")


def test_metric_recipe_resume_may_switch_execution_options_only(synthetic_blobs, tmp_path):
    from pellucid.errors import CheckpointError
    from pellucid.train import RECIPES

    entry = RECIPES.get("metric-mlp")
    cfg = entry.config_type(dataset=synthetic_blobs, metric="l2", hidden=4, epochs=2, batch_size=30, seed=1)
    entry.run(cfg, tmp_path / "run", progress=False)
    # how the distances are computed may change between sessions (l2 never compiles) ...
    entry.run(entry.config_type(**{**cfg.__dict__, "compiled_kernels": True, "factored_output": True}),
              tmp_path / "run", resume=True, progress=False)
    # ... what is computed may not
    with pytest.raises(CheckpointError, match="lr="):
        entry.run(entry.config_type(**{**cfg.__dict__, "lr": 0.5}), tmp_path / "run", resume=True, progress=False)


def test_metric_recipe_factored_output_reaches_the_invex_layers(synthetic_blobs, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from pellucid.nn.metric.invex import InvexDistance
    from pellucid.train import RECIPES

    calls = []
    factored_norm = InvexDistance._factored_norm
    monkeypatch.setattr(InvexDistance, "_factored_norm", lambda self, *a: calls.append(1) or factored_norm(self, *a))
    entry = RECIPES.get("metric-mlp")
    cfg = entry.config_type(dataset=synthetic_blobs, metric="ordinary", hidden=3, epochs=1, batch_size=30, seed=1)
    entry.run(cfg, tmp_path / "direct", progress=False)
    assert calls == []  # off by default
    entry.run(entry.config_type(**{**cfg.__dict__, "factored_output": True}), tmp_path / "factored", progress=False)
    assert len(calls) >= 2  # the training steps after the first (which set the ActNorms) and the test pass
    # the same function: three training steps give the same losses and test accuracy up to rounding
    # (not the same weights: the distance's scale e^t, normalised away by the BatchNorm after it, has
    # a gradient of pure rounding, which Adam turns into steps of +-lr either way)
    direct, factored = (json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[-1])
                        for name in ("direct", "factored"))
    assert factored["train_loss"] == pytest.approx(direct["train_loss"], rel=1e-5)
    assert factored["test_accuracy"] == direct["test_accuracy"]
    weights = load_file(tmp_path / "factored" / "model.safetensors")
    assert all(t.isfinite().all() for t in weights.values())
