import json

import torch

from pellucid.cli import main
from pellucid.models import MODELS, LeNet, create_model, lenet_mnist35, load_model
from pellucid.train import RECIPES, TrainConfig


def test_parameter_count():
    # conv 156 + 2,416, fc 48,120 + 10,164, head 84 K + K
    assert sum(p.numel() for p in lenet_mnist35().parameters()) == 61_026
    assert sum(p.numel() for p in LeNet(n_classes=10).parameters()) == 61_706


def test_registered_like_the_whitebox_model():
    spec = MODELS.get("lenet-mnist35")
    assert spec.input_shape == (1, 28, 28) and spec.dataset == "mnist" and spec.classes == (3, 5)
    assert isinstance(create_model("lenet-mnist35"), LeNet)


def test_output_shape_and_fx_trace_agree():
    model = lenet_mnist35().eval()
    x = torch.rand(4, 1, 28, 28)
    traced = torch.fx.symbolic_trace(model)
    assert model(x).shape == (4, 2)
    assert torch.equal(traced(x), model(x))
    # each ReLU is its own call site (explainers rewrite them one by one)
    relus = [n for n in traced.graph.nodes
             if n.op == "call_module" and isinstance(traced.get_submodule(n.target), torch.nn.ReLU)]
    assert len(relus) == 4 == len({n.target for n in relus})


def test_recipes_defaults():
    plain = RECIPES.get("lenet-mnist35").config_type()
    adv = RECIPES.get("lenet-mnist35-adv").config_type()
    base = TrainConfig()
    assert RECIPES.get("whitebox-mnist35").config_type is TrainConfig  # unchanged
    assert plain.noise_p == 0.0 and plain.adv_eps == 0.0
    assert adv.noise_p == 0.0 and adv.adv_eps == 0.3 and adv.adv_steps == base.adv_steps
    assert adv.adv_warmup_epochs == 5.0 and plain.adv_warmup_epochs == 0.0
    for cfg in (plain, adv):  # everything else is the white-box recipe's
        assert isinstance(cfg, TrainConfig)
        assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.seed) == (base.epochs, base.batch_size,
                                                                  base.lr, base.seed)


def test_adv_recipe_tiny_run_is_evaluable(tmp_path, capsys):
    out = tmp_path / "run"  # ~550 training images, 1 epoch, 2-step PGD training: a few seconds
    assert main(["train", "lenet-mnist35-adv", "--out", str(out), "--epochs", "1",
                 "--val-size", "11000", "--val-pgd-steps", "1", "--adv-steps", "2",
                 "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epoch"] == 1
    model, config = load_model(out)
    assert isinstance(model, LeNet) and config["model"] == "lenet-mnist35"
    assert config["train"]["adv_eps"] == 0.3 and config["train"]["noise_p"] == 0.0
    assert main(["evaluate", str(out), "--attack", "pgd", "--steps", "2", "--limit", "20",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["model"] == "lenet-mnist35"
