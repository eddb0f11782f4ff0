import json

import numpy as np
import pytest
import torch

from pellucid.errors import CheckpointError, InvalidInputError
from pellucid.models import (MODELS, create_model, load_model, save_model, whitebox_mnist35)


def test_parameter_count_is_4810():
    assert sum(p.numel() for p in whitebox_mnist35().parameters()) == 4810


def test_paper_init():
    model = whitebox_mnist35()
    assert model.twostep.t0.item() == pytest.approx(0.25) and model.twostep.t1.item() == pytest.approx(0.75)
    assert torch.allclose(model.conv.kernels.flatten(1).norm(dim=1), torch.ones(2))
    assert (model.conv.kernels[:, 2, 2] > 0.5).all()  # identity kernel plus small noise
    assert torch.allclose(model.affine.features.norm(dim=1), torch.ones(8))
    linear = model.affine.poses[..., :2]
    assert (linear - torch.eye(2)).abs().max() < 0.06  # I + N(0, 0.01^2)
    assert 0.5 < model.affine.poses[..., 2].std() < 1.5  # N(0, 1) pixel translations


def test_parity_with_authors_implementation(authors_model, authors_fixture, mnist35_test):
    _, ref = authors_fixture
    assert mnist35_test.index.tolist() == ref["mnist_test_index"].tolist()
    assert mnist35_test.labels.tolist() == ref["label"].tolist()
    trace = authors_model.trace(mnist35_test.images)
    assert np.abs(trace["twostep"][:16].numpy() - ref["twostep_out_first16"]).max() <= 1e-4
    assert np.abs(trace["conv"][:16].numpy() - ref["conv_out_first16"]).max() <= 1e-4
    assert np.abs(trace["affine"].numpy() - ref["affine_out"]).max() <= 1e-4
    assert np.abs(trace["logits"].numpy() - ref["logits"]).max() <= 1e-4
    correct = int((trace["logits"].argmax(1) == mnist35_test.labels).sum())
    assert correct == 1893  # 99.527 %


def test_output_of_an_image_does_not_depend_on_its_batch(authors_model, mnist35_test):
    x = mnist35_test.images[:6]
    with torch.no_grad():
        together = authors_model(x)
        alone = torch.cat([authors_model(x[i:i + 1]) for i in range(6)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_eval_cache_follows_weight_changes(authors_model, mnist35_test):
    model = whitebox_mnist35().eval()
    x = mnist35_test.images[:4]
    before = model(x)
    model.load_state_dict(authors_model.state_dict())
    assert torch.allclose(model(x), authors_model(x))
    assert not torch.allclose(before, model(x))


@pytest.mark.parametrize("bad,match", [
    (torch.rand(2, 1, 28, 28) * 2, r"\[0, 1\]"),
    (torch.rand(2, 28, 28), "shape"),
    (torch.full((2, 1, 28, 28), float("nan")), "NaN"),
    (torch.randint(0, 255, (2, 1, 28, 28), dtype=torch.uint8), "floating point"),
])
def test_bad_inputs_raise_clear_errors(bad, match):
    with pytest.raises(InvalidInputError, match=match):
        whitebox_mnist35()(bad)


def test_checkpoint_round_trip(tmp_path, authors_model, mnist35_test):
    save_model(authors_model, tmp_path / "m", "whitebox-mnist35",
               extra={"data": {"dataset": "mnist", "classes": [3, 5]}})
    loaded, config = load_model(tmp_path / "m")
    x = mnist35_test.images[:8]
    assert torch.equal(loaded(x), authors_model(x)) and config["model"] == "whitebox-mnist35"
    assert not list((tmp_path / "m").glob("*.tmp"))  # atomic writes leave no temporaries


def test_missing_corrupted_and_mismatched_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope")
    d = tmp_path / "m"
    save_model(whitebox_mnist35(), d, "whitebox-mnist35")
    (d / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupted"):
        load_model(d)
    save_model(create_model("whitebox-mnist35", n_affine_poses=16), d, "whitebox-mnist35")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "kwargs": {}}))
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_model(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupted"):
        load_model(d)


def test_every_registered_model_builds_and_runs():
    for entry in MODELS.entries():
        spec = entry.obj
        if spec.input_shape is None:
            continue
        model = create_model(entry.name).eval()
        x = torch.rand(2, *spec.input_shape) * (spec.value_range[1] - spec.value_range[0]) + spec.value_range[0]
        with torch.no_grad():
            out = model(x)
        assert out.shape[0] == 2 and torch.isfinite(out).all(), entry.name
