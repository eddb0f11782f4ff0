"""Fixtures of the app tests: the authors' white-box weights as a run directory (``authors_dir``,
from the top-level conftest), a data-initialised epsilon-softmax dictionary, and MNIST digits as
PNG files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interruptions import INTERRUPTIBLE


@pytest.fixture(scope="session")
def gradio_installed():
    """Skips (with the reason) a test that serves the page; the handlers need no Gradio."""
    pytest.importorskip("gradio", reason="the app's page needs gradio: pip install 'pellucid[app]'")


@pytest.fixture(scope="session")
def dictionary_dir(tmp_path_factory):
    """A ``dictionary-mlp`` run directory: 100 keys = seeded random MNIST training digits, values =
    their one-hot labels, epsilon = the keys' mean pairwise distance (the recipe's ``--data-init``
    without training: rejects uniform noise, accepts digits)."""
    from pellucid.data import load_dataset
    from pellucid.models import create_model, save_model

    train = load_dataset("mnist", "train")
    rows = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:100]
    torch.manual_seed(0)
    model = create_model("dictionary-mlp", hidden=100)
    model.init_from_data_(train.images[rows], train.labels[rows])
    out = tmp_path_factory.mktemp("dictionary")
    save_model(model, out, "dictionary-mlp", {"hidden": 100},
               extra={"data": {"dataset": "mnist", "classes": None, "class_names": list(train.classes)}})
    return out


@pytest.fixture(scope="session")
def digits(tmp_path_factory, mnist35_test):
    """``{"3": [png, ...], "5": [png, ...]}``: the first four test digits of each class as 28 x 28
    8-bit PNG files (exact: the test images are 8-bit)."""
    from PIL import Image

    out = tmp_path_factory.mktemp("digits")
    files: dict[str, list] = {"3": [], "5": []}
    for i in range(40):
        name = mnist35_test.classes[int(mnist35_test.labels[i])]
        if len(files[name]) < 4:
            path = out / f"digit{i}_{name}.png"
            Image.fromarray((mnist35_test.images[i, 0].numpy() * 255).round().astype(np.uint8)).save(path)
            files[name].append(path)
    return files


@pytest.fixture
def cache():
    from pellucid.app.cache import ModelCache

    return ModelCache()


@pytest.fixture(scope="session")
def interruptible():
    """``subprocess.Popen`` keyword arguments that let a test press Ctrl-C (see ``interruptions``)."""
    return INTERRUPTIBLE
