"""Shared fixtures: small real data, the authors' published weights, a tiny trained run."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture
def ctrl_c_heard():
    """SIGINT raises KeyboardInterrupt in this process, as in a terminal's Python, for the test.

    A suite started in the background by a non-interactive shell (``make test &``, some CI runners,
    ``nohup``) inherits SIGINT ignored, and pellucid keeps an ignored signal ignored: a test that
    presses Ctrl-C in process would then test nothing."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="session")
def mnist35_test():
    from pellucid.data import load_dataset

    return load_dataset("mnist", "test", classes=(3, 5))


@pytest.fixture(scope="session")
def authors_fixture():
    weights = FIXTURES / "whitebox_mnist35_authors.safetensors"
    outputs = FIXTURES / "whitebox_mnist35_authors_test_outputs.npz"
    # committed with the repository (tests/fixtures/README.md): missing means a broken checkout
    assert weights.is_file() and outputs.is_file(), f"parity fixtures missing from {FIXTURES}"
    return weights, dict(np.load(outputs))


@pytest.fixture(scope="session")
def authors_model(authors_fixture):
    from safetensors.torch import load_file

    from pellucid.models import convert_authors_state_dict, whitebox_mnist35

    model = whitebox_mnist35()
    model.load_state_dict(convert_authors_state_dict(load_file(str(authors_fixture[0]))))
    return model.eval()


@pytest.fixture(scope="module")
def authors_dir(tmp_path_factory, authors_model):
    """A model directory holding the authors' weights (one per test module: tests write records)."""
    from pellucid.models import save_model

    d = tmp_path_factory.mktemp("authors")
    save_model(authors_model, d, "whitebox-mnist35", extra={"data": {"dataset": "mnist", "classes": [3, 5]}})
    return d


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def chromium_browser():
    """Headless Chromium from the system (Debian's ``chromium``), driven by Playwright (which
    downloads no browser); skips, saying how to install, when either is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("no playwright: pip install playwright (the browser itself comes from the system)")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("no chromium: install it with `sudo apt-get install chromium` (or `make chromium`)")
    with sync_playwright() as playwright:
        # --no-sandbox: Chromium refuses to start its sandbox as root (CI containers)
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()
