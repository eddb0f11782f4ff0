"""The log's two disjunctive models: registered, shaped, traceable, trainable; recipes in the CLI."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pellucid.data import load_dataset
from pellucid.errors import InvalidInputError
from pellucid.models import MODELS, create_model, load_model
from pellucid.models.disjunction import DirectionalNet, DisjunctionNet
from pellucid.nn import Mean, Scale, SoftMaxPool
from pellucid.train import TrainConfig, fit

NAMES = ["disjunction-cifar-planes-cars", "directional-cifar-planes-cars", "disjunction-mnist35",
         "directional-mnist35"]


@pytest.mark.parametrize("name", NAMES)
def test_registered_model_builds_runs_and_traces(name):
    spec = MODELS.get(name)
    torch.manual_seed(0)
    model = create_model(name)
    x = torch.rand(4, *spec.input_shape)
    y = model(x)
    assert y.shape == (4, 2) and torch.isfinite(y).all()
    assert (spec.dataset, spec.classes) == (("cifar10", (0, 1)) if "cifar" in name else ("mnist", (3, 5)))
    assert isinstance(model.classifier[-2], SoftMaxPool) and isinstance(model.classifier[-1], Scale)
    traced = torch.fx.symbolic_trace(model.eval())  # the explainers rewrite traced graphs
    torch.testing.assert_close(traced(x), model(x))


def test_disjunction_stack_is_mean_of_5_parts_then_soft_or_of_12_conjunctions():
    torch.manual_seed(0)
    model = DisjunctionNet(in_channels=1).double().eval()
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    parts = model.features(x)  # (3, 120)
    assert parts.shape == (3, 120) and isinstance(model.classifier[0], Mean)
    conj = parts.view(3, 24, 5).mean(-1)  # 24 conjunctions of 5 consecutive parts
    per_class = conj.view(3, 2, 12)  # class j: conjunctions 12 j .. 12 j + 11
    model.classifier[-1].scale.data.fill_(1.5)
    expected = 1.5 * (torch.logsumexp(per_class, -1) - torch.log(torch.tensor(12.0, dtype=torch.float64)))
    torch.testing.assert_close(model(x), expected, atol=1e-12, rtol=0)


def test_directional_spatial_sizes():
    cifar, mnist = DirectionalNet(3), DirectionalNet(1, pool_padding=1)
    assert cifar.features[:3](torch.rand(1, 3, 32, 32)).shape[-2:] == (4, 4)
    assert mnist.features[:3](torch.rand(1, 1, 28, 28)).shape[-2:] == (4, 4)
    with pytest.raises(RuntimeError):  # why the MNIST variant pads the pool: 3 x 3 < 4 x 4 kernel
        DirectionalNet(1)(torch.rand(1, 1, 28, 28))


def test_bad_model_sizes_are_one_line_errors():
    with pytest.raises(InvalidInputError, match="parts=7"):
        DisjunctionNet(parts=7)
    with pytest.raises(InvalidInputError, match="n_classes=7"):
        DirectionalNet(n_classes=7)


@pytest.fixture(scope="module")
def mnist35_small():
    ds = load_dataset("mnist", "train", classes=(3, 5))
    return ds.subset(torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:200])


@pytest.mark.parametrize("name", ["disjunction-mnist35", "directional-mnist35"])
def test_tiny_training_run_lowers_the_loss_and_reloads(name, mnist35_small, tmp_path):
    torch.manual_seed(0)
    model = create_model(name)
    x, y = mnist35_small.images, mnist35_small.labels
    with torch.no_grad():
        before = F.cross_entropy(model.train()(x), y).item()
    cfg = TrainConfig(epochs=4, batch_size=50, lr=3e-3, noise_p=0.0, val_size=0, val_pgd_steps=0, seed=0)
    history = fit(model, mnist35_small.subset(slice(None)), mnist35_small.subset(slice(0, 0)), cfg,
                  tmp_path / "run", model_name=name, progress=False)
    reloaded, config = load_model(tmp_path / "run")  # rebuilt from the registry
    assert config["model"] == name
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x[:8]), model.eval()(x[:8]))
        after = F.cross_entropy(model.train()(x), y).item()
    assert after < 0.8 * before, (before, after)
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_recipes_are_listed_in_train_help(capsys):
    from pellucid.cli.main import main

    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in NAMES)
    assert main(["train", "disjunction-cifar-planes-cars", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.03137" in text  # CIFAR's validation eps is 8/255, not MNIST's 0.3
