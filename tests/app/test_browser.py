"""The app in a real headless Chromium (Playwright driving the system browser; nothing is
downloaded): every tab is loaded, an input drawn or uploaded, the buttons pressed, and what the
page shows is checked. Every request the page makes must stay on the app's own address.

Skipped, with the reason, where Playwright or a Chromium binary is missing (``make chromium``
installs Debian's). ``PELLUCID_WRITE_SCREENSHOT=1`` also writes the screenshots of
``docs/img/app*.png`` (not by default, so a test run leaves the tree clean).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = os.environ.get("PELLUCID_WRITE_SCREENSHOT") == "1"
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def browser(gradio_installed, chromium_browser):
    return chromium_browser


@pytest.fixture(scope="module")
def server(authors_dir, dictionary_dir, tmp_path_factory, interruptible):
    """``pellucid app`` in a subprocess, as a user starts it from a project folder holding
    ``runs/demo`` (the white-box network) and ``runs/dict`` (the dictionary); yields its address."""
    work = tmp_path_factory.mktemp("project")
    shutil.copytree(authors_dir, work / "runs" / "demo")
    shutil.copytree(dictionary_dir, work / "runs" / "dict")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_TEMP_DIR": str(tmp_path_factory.mktemp("gradio"))}
    log = work / "server.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "pellucid", "app", "--model", "runs/demo", "runs/dict",
                                 "--port", str(port)], cwd=work, env=env, stdout=subprocess.DEVNULL,
                                stderr=stderr, text=True, **interruptible)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"pellucid app did not start: {log.read_text()}")
    yield url
    served = log.read_text()  # before the shutdown, whose own messages are not the point here
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    assert "Traceback" not in served, served  # bad inputs never reached the server's log as a traceback


@pytest.fixture(scope="module")
def outside():
    """Every request the page made to anywhere but the app itself."""
    return []


@pytest.fixture(scope="module")
def page(browser, server, outside):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)

    def record(request):
        if not request.url.startswith((server, "data:", "blob:")):
            outside.append(request.url)

    page.on("request", record)
    page.goto(server)
    page.wait_for_selector("#inspector-canvas")
    yield page
    page.close()


def _wait_text(page, selector: str, pattern: str) -> str:
    """The text of the Markdown box ``selector`` (not its progress overlay) once it matches the
    regular expression ``pattern``."""
    selector = f"{selector} [data-testid=markdown]"
    page.wait_for_function("([sel, pat]) => { const e = document.querySelector(sel);"
                           " return e !== null && new RegExp(pat).test(e.innerText); }", arg=[selector, pattern])
    return page.inner_text(selector)


def _image(page, selector: str) -> np.ndarray:
    """The pixels the page shows in the image component ``selector``."""
    page.wait_for_selector(f"{selector} img")
    src = page.get_attribute(f"{selector} img", "src")
    body = page.request.get(src).body() if not src.startswith("data:") else None
    assert body, f"{selector} shows no image"
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def _wait_new_source(page, selector: str, old: str | None, timeout_ms: int = 15_000) -> None:
    """Wait (a bounded time) until the image in ``selector`` has a source other than ``old``; a
    picture that never changes is left for the caller's comparison to report."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function("([sel, old]) => { const e = document.querySelector(sel + ' img');"
                               " return e !== null && e.getAttribute('src') !== old; }",
                               arg=[selector, old], timeout=timeout_ms)
    except PlaywrightTimeout:
        pass


def _upload(page, selector: str, path) -> None:
    """Put ``path`` in the file box ``selector`` (clearing the file it shows first)."""
    clear = page.locator(f"{selector} button[aria-label=Clear]")
    if clear.count():
        clear.first.click()
    page.set_input_files(f"{selector} input[type=file]", str(path))


def _screenshot(page, name: str) -> None:
    if SCREENSHOTS:
        page.screenshot(path=str(REPO / "docs" / "img" / name), full_page=True)


def _draw(page, selector: str, points: list[tuple[float, float]]) -> None:
    page.locator(f"{selector} button[aria-label=Brush]").click()
    canvas = page.locator(f"{selector} canvas").first
    box = canvas.bounding_box()
    x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]
    page.mouse.move(x0 + w * points[0][0], y0 + h * points[0][1])
    page.mouse.down()
    for u, v in points[1:]:
        page.mouse.move(x0 + w * u, y0 + h * v, steps=8)
    page.mouse.up()


THREE = [(0.3, 0.2), (0.5, 0.15), (0.7, 0.25), (0.65, 0.42), (0.45, 0.5), (0.68, 0.6), (0.7, 0.78),
         (0.5, 0.87), (0.3, 0.8)]


def test_inspector_upload_draw_attack_and_bad_files(page, digits, tmp_path):
    _upload(page, "#inspector-upload", digits["5"][0])
    assert "Prediction: 5" in _wait_text(page, "#inspector-status", "Prediction: 5|Error")
    page.locator("#inspector-upload button[aria-label=Clear]").click()

    _draw(page, "#inspector-canvas", THREE)
    page.click("#inspector-draw")
    status = _wait_text(page, "#inspector-status", "Prediction: 3|Error")
    assert "Prediction: 3" in status and "Reliability score" in status
    assert "inverted to light strokes" in _wait_text(page, "#inspector-conversion", "canvas")
    layers = [_image(page, f"#inspector-layer-{i}") for i in range(4)]
    assert all(layer.std() > 5 for layer in layers)  # drawn figures, not blank
    assert _image(page, "#inspector-input").std() > 5

    page.click("#inspector-attack")
    attack = _wait_text(page, "#inspector-attack-status", "PGD-40 at|Error")
    assert "PGD-40 at L-inf eps 0.3" in attack and "against 3" in attack
    assert _image(page, "#inspector-evidence").std() > 5
    _screenshot(page, "app.png")

    (tmp_path / "notes.png").write_text("not an image")
    _upload(page, "#inspector-upload", tmp_path / "notes.png")
    assert "not an image file" in _wait_text(page, "#inspector-status", "Error")
    _upload(page, "#inspector-upload", digits["3"][1])
    assert "Prediction: 3" in _wait_text(page, "#inspector-status", "Prediction: 3")  # still serving


def _set_number(page, selector: str, value) -> None:
    box = page.locator(f"{selector} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def test_pullback_pictures_change_with_the_target(page, digits):
    page.get_by_role("tab", name="Pullback explorer").click()
    page.locator("#pullback-model input").click()
    page.get_by_role("option", name="whitebox-mnist35: runs/demo").click()
    _upload(page, "#pullback-upload", str(digits["5"][0]))
    page.locator("#pullback-kind").get_by_text("class index").click()
    shown, sources = {}, {}
    for target in (0, 1):
        _set_number(page, "#pullback-class", target)
        page.click("#pullback-run")
        status = _wait_text(page, "#pullback-status", f"output {target}|Error")
        assert f"target: output {target}" in status and "after the counterfactual ascent" in status
        if target:  # the pictures may reach the page after the status line: wait for new sources
            for key, src in sources.items():
                _wait_new_source(page, f"#pullback-{key}", src)
        sources = {key: page.get_attribute(f"#pullback-{key} img", "src")
                   for key in ("attribution", "counterfactual", "difference")}
        shown[target] = {key: _image(page, f"#pullback-{key}") for key in sources}
        if target == 0:
            _screenshot(page, "app-pullback.png")
    for key in ("attribution", "counterfactual", "difference"):
        assert shown[0][key].std() > 1 and shown[1][key].std() > 1, key
        assert not np.array_equal(shown[0][key], shown[1][key]), key  # the target changes the picture
    assert "5 (1)" in page.inner_text("#pullback-top")
    assert "ReLU call sites replaced" in page.input_value("#pullback-coverage textarea")

    page.locator("#pullback-kind").get_by_text("hidden unit").click()
    page.locator("#pullback-unit textarea, #pullback-unit input").first.fill("features.9:1")
    page.click("#pullback-run")
    assert "no module 'features.9'" in _wait_text(page, "#pullback-status", "Error")


def test_rejection_refuses_noise_and_the_threshold_moves_the_decision(page):
    page.get_by_role("tab", name="Rejection").click()
    page.click("#rejection-noise")
    status = _wait_text(page, "#rejection-status", "REJECTED|ACCEPTED|Error")
    assert "REJECTED" in status and "nearest centre is at distance" in status
    for key in ("scores", "why", "curve"):
        assert _image(page, f"#rejection-{key}").std() > 5, key
    _screenshot(page, "app-rejection.png")
    _set_number(page, "#rejection-threshold", 2.0)
    status = _wait_text(page, "#rejection-status", "ACCEPTED|Error")
    assert "ACCEPTED" in status and "2.00 x the trained epsilon" in status


def test_no_request_left_the_app(page, outside):
    """Fonts, scripts, analytics: everything came from the app itself."""
    assert outside == []
