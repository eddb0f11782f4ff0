"""Ten-class models: the white-box network beyond 3 vs 5 and its same-size and large baselines."""

import pytest
import torch

from pellucid.models import MODELS, create_model
from pellucid.nn import LogicalFeatures
from pellucid.train.recipes import RECIPES


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["whitebox-mnist10", "whitebox-fashion10"])
def test_ten_class_whitebox_has_the_documented_size(name):
    model = create_model(name)
    # TwoStep 8, conv 2 x 25, affine 80 x 400 features + 80 x 16 x 6 poses, logical 10 x 80
    assert _n_params(model) == 8 + 50 + 80 * 400 + 80 * 16 * 6 + 10 * 80 == 40_538
    assert _n_params(model) <= 50_000  # the budget
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert MODELS.get(name).classes is None  # all ten classes, labels as in the dataset


def test_baseline_sizes():
    # LeNet: 156 + 2,416 + 48,120 + 10,164 + 850; Madry CNN: 832 + 51,264 + 3,212,288 + 10,250
    assert _n_params(create_model("lenet-mnist10")) == 156 + 2416 + 48120 + 10164 + 850
    assert _n_params(create_model("madry-cnn-mnist10")) == 832 + 51264 + 3212288 + 10250


def test_ten_class_logical_layer_equals_its_closed_form():
    # logit_c = v_c max_k x[block c, k] + sum_{c' != c} <f_{c, c'}, x[block c']>
    torch.manual_seed(0)
    c, k = 10, 8
    layer = LogicalFeatures(c, block=k).double()
    with torch.no_grad():
        layer.features.normal_()
    x = torch.randn(5, c * k, dtype=torch.float64)
    f = layer.features.view(c, c, k)
    expected = torch.empty(5, c, dtype=torch.float64)
    for cls in range(c):  # slow reference, one class at a time
        v = f[cls, cls].max()
        own = x[:, cls * k:(cls + 1) * k].max(1).values
        others = sum(x[:, j * k:(j + 1) * k] @ f[cls, j] for j in range(c) if j != cls)
        expected[:, cls] = v * own + others
    positive = (f[torch.arange(c), torch.arange(c)].max(1).values > 0).all()
    assert positive  # the closed form holds for v_c >= 0 (seed chosen so)
    assert torch.allclose(layer(x), expected, atol=1e-12)


def test_whitebox_recipes_use_no_adversarial_training():
    for name in ("whitebox-mnist35", "whitebox-mnist10", "whitebox-fashion10"):
        cfg = RECIPES.get(name).config_type()
        assert cfg.adv_eps == 0.0, name
    assert RECIPES.get("whitebox-fashion10").config_type().val_eps == pytest.approx(0.1)
    assert RECIPES.get("lenet-mnist10-adv").config_type().adv_eps == pytest.approx(0.3)
    assert RECIPES.get("lenet-fashion10-adv").config_type().adv_eps == pytest.approx(0.1)


def test_ten_class_whitebox_learns_a_separable_toy_task():
    # one training pass on ten blob classes must beat chance by far: the 10-way head is wired
    torch.manual_seed(0)
    model = create_model("whitebox-mnist10")
    centres = torch.rand(10, 1, 28, 28)
    y = torch.arange(10).repeat(20)
    x = (centres[y] + 0.05 * torch.randn(200, 1, 28, 28)).clamp(0, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc > 0.5, acc
