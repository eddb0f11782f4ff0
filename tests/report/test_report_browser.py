"""The run report as a reader sees it, in a real headless Chromium (Playwright driving the
system browser; nothing is downloaded): every embedded image loads, the headline shows
percentages, the gradient-masking checks are a table, figures zoom on click, and the page asks
for nothing beyond its own file.

The run is made here, small: the white-box network trained for three epochs on 1,200 MNIST 3/5
training images, then ``evaluate_run`` (PGD-3 at eps 0.1, checks on 16 of 24 test images,
report), as
``pellucid demo`` does at full size. Skipped, with the reason, where Playwright or a Chromium
binary is missing (``make chromium`` installs Debian's).
"""

from __future__ import annotations

import re

import pytest

TIMEOUT_MS = 60_000
PERCENT = re.compile(r"^\d{1,3}\.\d{2}\s%$")  # "92.53 %" (the space is a no-break space)
CHECKS = {"gradients", "deterministic", "unbounded", "monotone", "black_box"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A trained and evaluated run directory with its report (about 10 s on one CPU thread)."""
    from pellucid.data import load_dataset
    from pellucid.models import create_model
    from pellucid.report.evaluation import evaluate_run
    from pellucid.train import TrainConfig
    from pellucid.train.trainer import fit

    out = tmp_path_factory.mktemp("tiny_run")
    ds = load_dataset("mnist", "train", classes=(3, 5))
    train, val = ds.subset(slice(0, 1200)), ds.subset(slice(1200, 1300))
    cfg = TrainConfig(epochs=3, batch_size=100, val_size=len(val), val_pgd_steps=2, seed=0)
    data = {"dataset": "mnist", "classes": [3, 5], "class_names": list(ds.classes),
            "n_train": len(train), "n_val": len(val)}
    fit(create_model("whitebox-mnist35"), train, val, cfg, out, model_name="whitebox-mnist35",
        extra_config={"data": data}, progress=False)
    done = evaluate_run(out, attack="pgd", eps=0.1, options={"steps": 3, "step_size": 0.1}, limit=24,
                        checks=True, check_limit=16, report=True)
    return out, done.summary


@pytest.fixture(scope="module")
def page(tiny_run, chromium_browser):
    page = chromium_browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto((tiny_run[0] / "report.html").as_uri(), wait_until="load")
    page.requests = requests
    yield page
    page.close()


def _headline(page) -> dict[str, str]:
    return page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('.headline .stat')].map(
        s => [s.querySelector('.label').textContent, s.querySelector('.value').textContent]))""")


def test_every_image_loads_and_nothing_is_fetched(page):
    images = page.evaluate("""() => [...document.images].map(i => ({
        ok: i.complete && i.naturalWidth > 0, data: i.src.startsWith('data:image/png;base64,'),
        shown: i.getBoundingClientRect().width}))""")
    # reliability, accuracy vs eps, learning curve, TwoStep, kernels, 2 x affine, how the model sees
    assert len(images) >= 8
    assert all(i["ok"] and i["data"] and i["shown"] > 0 for i in images), images
    assert all(u.startswith(("file:", "data:")) for u in page.requests), page.requests


def test_the_headline_shows_percentages_and_human_units(page, tiny_run):
    summary = tiny_run[1]
    stats = _headline(page)
    for label, key in (("clean accuracy", "clean_accuracy"), ("robust accuracy", "robust_accuracy"),
                       ("precision at 80 % recall", "precision_at_recall_0.8")):
        assert PERCENT.match(stats[label]), (label, stats[label])
        assert float(stats[label].split()[0]) == pytest.approx(summary[key] * 100, abs=0.006)
    notes = page.inner_text(".headline")
    assert "L-inf eps 0.1" in notes and "24 test images" in notes
    from pellucid.models import load_model

    model, _ = load_model(tiny_run[0])
    assert stats["parameters"] == f"{sum(p.numel() for p in model.parameters()):,}"
    training = stats["training time"].replace("\u00a0", " ")
    assert re.fullmatch(r"\d+ ms|\d+(\.\d)? s|\d+ min \d+ s", training), stats
    # no cell is a bare 4-decimal number (a fraction, or "seconds 476.0000"); the training log's
    # losses are the one column written so
    cells = page.evaluate("""() => [...document.querySelectorAll('section')]
        .filter(s => s.querySelector('h2').textContent !== 'Training')
        .flatMap(s => [...s.querySelectorAll('td')].map(td => td.textContent))""")
    assert cells and not [c for c in cells if re.fullmatch(r"\d+\.\d{4}", c)], cells
    times = page.evaluate("""() => [...document.querySelectorAll('td')].filter(td => {
        const table = td.closest('table'), col = td.cellIndex;
        return /time$/.test(table.rows[0].cells[col]?.textContent || '');
    }).map(td => td.textContent)""")
    assert times and all(re.fullmatch(r"\d+ ms|\d+(\.\d)? s|\d+ min \d+ s", t.replace("\u00a0", " "))
                         for t in times), times


def test_the_gradient_masking_checks_are_a_table(page, tiny_run):
    rows = page.evaluate("""() => {
        const h = [...document.querySelectorAll('h2')].find(h => h.textContent === 'Gradient-masking checks');
        const table = h && h.parentElement.querySelector('table');
        if (!table) return null;
        const head = [...table.rows[0].cells].map(c => c.textContent);
        return [...table.rows].slice(1).map(r => Object.fromEntries(
            [...r.cells].map((c, i) => [head[i], c.textContent])));
    }""")
    assert rows, "no gradient-masking checks table"
    assert {r["check"] for r in rows} == CHECKS == set(tiny_run[1]["checks"])
    for r in rows:
        passed = tiny_run[1]["checks"][r["check"]]["passed"]
        assert r["result"] == {True: "passed", False: "FAILED", None: "not run"}[passed]
        # the evidence is the check's own number: the unbounded check's accuracy as a percentage
        if r["check"] == "unbounded":
            value = tiny_run[1]["checks"]["unbounded"]["value"]
            assert r["evidence"].endswith(f"{value * 100:.2f}\u00a0%"), r


def test_figures_show_their_own_n_and_zoom_on_click(page):
    # the accuracy-vs-eps curve ran on 16 of the 24 test images, the learning curve on 100
    # validation images: each says so beside it
    badges = page.evaluate("() => [...document.querySelectorAll('figcaption .n')].map(n => n.textContent)")
    assert "n = 16 test images" in badges and "n = 100 validation images" in badges, badges
    first = page.locator("figure").first
    first.locator("a.zoom").click()
    box = first.bounding_box()
    assert box["width"] >= 1200 and box["height"] >= 850  # the figure fills the window
    first.locator("a.close").click()
    assert first.bounding_box()["width"] < 1200


def test_provenance_names_commit_time_and_command(page):
    facts = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('#provenance table tr')]
        .map(r => [r.cells[0].textContent, r.cells[1].textContent]))""")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", facts["written (UTC)"]), facts
    assert facts["command"] and facts["git commit"], facts
    assert facts["training seed"] == "0" and facts["device"] == "cpu", facts
