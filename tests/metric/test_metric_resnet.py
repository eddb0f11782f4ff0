"""The metric ResNet-20 recipes: crop-and-flip augmentation, SGD on the shared trainer, the grey
stand-in, resume after a kill, and bad inputs."""

import json

import pytest
import torch
import torch.nn.functional as F

from pellucid.cli import main
from pellucid.data import DATASETS, ImageDataset
from pellucid.errors import InvalidInputError
from pellucid.models import create_model
from pellucid.models.metric import MetricResNet20
from pellucid.train import RECIPES
from pellucid.train.trainer import crop_flip


def _crop_flip_reference(x, generator, pad=4):
    """One image at a time: pad, crop at the drawn offset, flip when drawn (same draws, same order)."""
    b, _, h, w = x.shape
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator)
    flips = torch.rand(b, generator=generator) < 0.5
    out = []
    for i in range(b):
        padded = F.pad(x[i], (pad, pad, pad, pad))
        top, left = int(offsets[i, 0]), int(offsets[i, 1])
        crop = padded[:, top:top + h, left:left + w]
        out.append(crop.flip(-1) if flips[i] else crop)
    return torch.stack(out)


@pytest.mark.parametrize("shape", [(6, 3, 32, 32), (5, 1, 28, 28), (4, 2, 7, 9)])
def test_crop_flip_equals_a_per_image_reference(shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    got = crop_flip(x, torch.Generator().manual_seed(7))
    want = _crop_flip_reference(x, torch.Generator().manual_seed(7))
    assert torch.equal(got, want)
    assert got.dtype == x.dtype and got.shape == x.shape


def test_crop_flip_draws_every_offset_and_both_orientations():
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(400, 1, 1, 1)
    out = crop_flip(x, torch.Generator().manual_seed(3), pad=1)
    # every output is a shifted (and maybe mirrored) copy: some keep the original, some are mirrored
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert same.any() and mirrored.any()
    assert (~same & ~mirrored).any()  # shifted ones, with zeros from the padding
    assert ((out == 0) | torch.isin(out, x[0])).all()  # nothing but the image's values and padding


def test_grey_resnet_checks_its_input_and_channels():
    net = create_model("metric-resnet20-fashion", metric="stereo").eval()
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(InvalidInputError, match=r"\(B, 1, H, W\)"):
        net(torch.rand(2, 3, 28, 28))
    with pytest.raises(InvalidInputError, match="in_channels"):
        MetricResNet20(in_channels=2)


@pytest.fixture
def tiny_images(monkeypatch):
    """'tiny-grey' (1 x 28 x 28) and 'tiny-colour' (3 x 32 x 32): 3 classes of blobs, seeded."""
    def blobs(channels, size, n, seed):
        gen = torch.Generator().manual_seed(seed)
        labels = torch.arange(3).repeat_interleave(n)
        base = torch.zeros(3, channels, size, size)
        for k in range(3):
            base[k, :, 4 + 6 * k:10 + 6 * k, 4:12] = 0.9
        return (base[labels] + 0.05 * torch.randn(len(labels), channels, size, size, generator=gen)).clamp(0, 1), labels

    def loader(channels, size):
        def load(split, data_dir=None):
            x, y = blobs(channels, size, 12 if split == "train" else 4, 0 if split == "train" else 1)
            return ImageDataset(x, y, ("a", "b", "c"), "synthetic", torch.arange(len(y)))
        return load

    entry = type(DATASETS._entries["fashion-mnist"])
    monkeypatch.setitem(DATASETS._entries, "tiny-grey", entry("tiny-grey", loader(1, 28), "test"))
    monkeypatch.setitem(DATASETS._entries, "tiny-colour", entry("tiny-colour", loader(3, 32), "test"))


def test_grey_resnet_recipe_uses_sgd_and_crop_flip_and_resumes_bit_for_bit(tiny_images, tmp_path,
                                                                           run_interrupted):
    from safetensors.torch import load_file

    entry = RECIPES.get("metric-resnet20-fashion")
    cfg = entry.config_type(dataset="tiny-grey", metric="stereo", epochs=3, batch_size=12,
                            train_limit=30, seed=2)
    assert (cfg.optimizer, cfg.momentum, cfg.lr, cfg.weight_decay, cfg.augment, cfg.schedule) == \
        ("sgd", 0.9, 0.1, 5e-4, "crop-flip", "cosine")
    result = entry.run(cfg, tmp_path / "whole", progress=False)
    assert [r["epoch"] for r in result["epochs"]] == [1, 2, 3]
    config = json.loads((tmp_path / "whole" / "config.json").read_text())
    assert config["data"]["n_train"] == 30 and config["train"]["optimizer"] == "sgd"
    state = load_file(tmp_path / "whole" / "train_state.safetensors")
    assert any(k.endswith(".momentum_buffer") for k in state)  # SGD's state is checkpointed

    run_interrupted(entry, cfg, tmp_path / "killed", at_call=2)  # epoch 1 saved
    entry.run(cfg, tmp_path / "killed", resume=True, progress=False)
    whole, resumed = (load_file(tmp_path / d / "model.safetensors") for d in ("whole", "killed"))
    assert whole.keys() == resumed.keys()
    for name in whole:
        assert torch.equal(whole[name], resumed[name]), name


def test_colour_resnet_recipe_trains_and_evaluates(tiny_images, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "metric-resnet20", "--dataset", "tiny-colour", "--metric", "linear",
                 "--epochs", "1", "--batch-size", "18", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json", "--attack", "fgsm", "--eps", "0.01"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= record["clean_accuracy"] <= 1


@pytest.mark.parametrize("argv,message", [
    (["metric-resnet20", "--dataset", "tiny-grey"], "metric-resnet20 take 3 x 32 x 32 images; tiny-grey has 1 x 28 x 28"),
    (["metric-resnet20-fashion", "--dataset", "tiny-colour"], "take 1 x 28 x 28 images"),
    (["metric-resnet20-fashion", "--metric", "l-two"], "l-two"),
    (["metric-resnet20-fashion", "--momentum", "1.5"], "momentum"),
    (["metric-resnet20-fashion", "--momentum", "nan"], "momentum"),
    (["metric-resnet20-fashion", "--optimizer", "rmsprop"], "optimizer"),
    (["metric-resnet20-fashion", "--augment", "mixup"], "augment"),
    (["metric-resnet20-fashion", "--train-limit", "-1"], "train-limit"),
])
def test_resnet_recipes_bad_inputs_are_one_line_errors(tiny_images, tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert main(["train", *argv, "--epochs", "1", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (out / "model.safetensors").exists()
