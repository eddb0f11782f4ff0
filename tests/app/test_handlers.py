"""The app's handlers, called directly (no browser): each tab's numbers are checked against a
simpler computation written here."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from pellucid.app import images, inspector, pullback, rejection


def _canvas_from_digit(path, size: int = 280) -> np.ndarray:
    """What the canvas sends for a drawing of this digit: dark strokes on white, 280 x 280."""
    digit = Image.open(path).resize((size, size), Image.NEAREST)
    return 255 - np.asarray(digit)


# --------------------------------------------------------------------------- images


def test_upload_goes_through_the_cli_loader_unchanged(digits):
    from pellucid.data.images import load_image

    path = digits["3"][0]
    got = images.from_file(path, (1, 28, 28))
    assert torch.equal(got.x, load_image(str(path), (1, 28, 28)))
    assert "resized" in got.steps[-1] and path.name in got.steps[0]


def test_colour_and_alpha_are_converted_and_the_steps_say_so(tmp_path, digits):
    from pellucid.data.images import load_image

    grey = np.asarray(Image.open(digits["5"][0]))
    rgba = np.stack([grey, grey // 2, grey // 3, np.full_like(grey, 255)], -1)
    rgba[:4, :4, 3] = 0  # a transparent corner
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    got = images.from_file(tmp_path / "rgba.png", (1, 28, 28))
    reference = Image.fromarray(rgba, "RGBA")
    flat = Image.new("RGBA", reference.size, (0, 0, 0, 255))
    flat.alpha_composite(reference)
    flat.convert("L").save(tmp_path / "expected.png")
    assert torch.equal(got.x, load_image(str(tmp_path / "expected.png"), (1, 28, 28)))
    assert any("alpha" in s for s in got.steps) and any("grey" in s for s in got.steps)


def test_invert_and_canvas_give_mnist_polarity(digits):
    path = digits["3"][0]
    plain = images.from_file(path, (1, 28, 28))
    inverted = images.from_file(path, (1, 28, 28), invert=True)
    assert torch.allclose(inverted.x, 1 - plain.x)
    drawn = images.from_canvas({"composite": _canvas_from_digit(path)}, (1, 28, 28))
    # the same digit back, up to resampling (a 10x nearest upscale, then the antialiased downscale)
    assert float(torch.corrcoef(torch.stack([drawn.x.flatten(), plain.x.flatten()]))[0, 1]) > 0.95
    assert "inverted" in drawn.steps[1]


def test_preview_enlarges_small_images_by_whole_pixels():
    x = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    shown = images.preview(x)
    assert shown.shape == (224, 224, 3) and shown.dtype == np.uint8
    assert np.array_equal(shown[::8, ::8, 0], (x[0, 0].numpy() * 255 + 0.5).astype(np.uint8))


# --------------------------------------------------------------------------- inspector


@pytest.mark.parametrize("label", ["3", "5"])
def test_inspector_predicts_the_digits_and_shows_every_layer(cache, authors_dir, digits, label):
    for path in digits[label]:
        result = inspector.inspect(cache, str(authors_dir), images.from_file(path, (1, 28, 28)))
        assert result.label == label
        assert abs(sum(result.probabilities.values()) - 1) < 1e-9
        assert len(result.layers) == 4
        for image, caption in result.layers:
            assert image.ndim == 3 and image.shape[2] == 3 and image.std() > 5, caption
        assert f"Prediction: {label}" in result.summary()
        assert 0 <= result.reliability.precision <= 1 and 0 <= result.reliability.recall <= 1


def test_logical_contributions_sum_to_the_logits(cache, authors_dir, digits):
    loaded = cache.get(str(authors_dir))
    x = images.from_file(digits["5"][1], (1, 28, 28)).x
    t = loaded.model.trace(x)
    m = inspector._logical_contributions(t, loaded.model.logical.posed_weights(), 2)
    assert torch.allclose(m.sum(1), t["logits"][0].double(), atol=1e-5)


def test_reliability_point_matches_a_direct_count(cache, authors_dir, mnist35_test):
    """Precision and recall at the input's score, counted directly over the 500 test images."""
    loaded = cache.get(str(authors_dir))
    curve, source = inspector.reliability_for(cache, loaded)
    assert "first 500" in source
    test = mnist35_test.subset(slice(0, inspector.RELIABILITY_IMAGES))
    with torch.no_grad():
        probs = loaded.model(test.images).double().softmax(1)
    score, pred = probs.max(1)
    correct = pred == test.labels
    for threshold in (float(score.median()), float(score.min()), 0.999):
        point = inspector._place(curve, threshold, source)
        kept = score >= threshold
        assert point.precision == pytest.approx(float(correct[kept].double().mean()))
        assert point.recall == pytest.approx(float((correct & kept).sum() / correct.sum()))


def test_reliability_prefers_the_recorded_curve_of_the_same_weights(tmp_path, authors_model):
    from pellucid._io import tensors_sha256
    from pellucid.app.cache import ModelCache
    from pellucid.models import save_model

    run = tmp_path / "run"
    save_model(authors_model, run, "whitebox-mnist35", extra={"data": {"dataset": "mnist", "classes": [3, 5]}})
    curve = {"precision": [1.0, 0.9], "recall": [0.5, 1.0], "thresholds": [0.99, 0.5], "accuracy": 0.9}
    summary = {"attack": "pgd", "eps": 0.3, "norm": "linf", "n": 1902, "options": {"steps": 40}}
    (run / "evaluations").mkdir()
    for name, sha in (("stale", "0" * 64), ("current", tensors_sha256(authors_model.state_dict()))):
        (run / "evaluations" / f"{name}.json").write_text(json.dumps(
            {"summary": {**summary, "weights_sha256": sha, "n": 1902 if name == "current" else 9999},
             "reliability": curve}))
    cache = ModelCache()
    got, source = inspector.reliability_for(cache, cache.get(str(run)))
    assert "PGD-40" in source and "1,902" in source and got.precision.tolist() == [1.0, 0.9]


def test_attack_stays_in_budget_and_large_eps_flips_the_prediction(cache, authors_dir, digits):
    x = images.from_file(digits["3"][0], (1, 28, 28)).x
    weak = inspector.attack(cache, str(authors_dir), x.numpy(), eps=0.02, steps=10)
    assert weak.label_before == weak.label_after == "3"
    assert float((weak.x_adv - x).abs().max()) <= 0.02 + 1e-6
    strong = inspector.attack(cache, str(authors_dir), x.numpy(), eps=1.0, steps=100)
    assert strong.label_after == "5" and "changed the prediction" in strong.summary()
    assert strong.evidence_figure.std() > 5
    again = inspector.attack(cache, str(authors_dir), x.numpy(), eps=0.02, steps=10)
    assert torch.equal(again.x_adv, weak.x_adv)  # seeded


# --------------------------------------------------------------------------- pullback


def test_pullback_equals_the_library_call_and_changes_with_the_target(cache, authors_dir, digits):
    from pellucid.explain import ExcitationPullback

    path = str(digits["5"][0])
    results = {c: pullback.explain(cache, str(authors_dir), path, pullback.Target("class index", c))
               for c in (0, 1)}
    assert not np.array_equal(results[0].attribution, results[1].attribution)
    for c, r in results.items():
        assert r.score_after > r.score_before  # the ascent raises the target's logit
        assert list(r.top)[0] == "5 (1)" and len(r.top) == 2
        assert "ReLU call sites replaced" in r.coverage
    loaded = cache.get(str(authors_dir))
    x = images.from_file(path, (1, 28, 28)).x
    expected = ExcitationPullback(loaded.model).attribute(x, target=torch.tensor([0]))
    heat = expected.sum(1)[0]
    limit = float(heat.abs().flatten().quantile(0.995))
    from pellucid.app.figures import signed_rgb
    assert np.array_equal(results[0].attribution[::8, ::8], signed_rgb(heat, limit))


def test_pullback_unit_and_cosine_targets_and_baseline_methods(cache, authors_dir, digits):
    path = str(digits["5"][0])
    unit = pullback.explain(cache, str(authors_dir), path, pullback.Target("hidden unit", "affine:3"))
    assert unit.target == "hidden unit affine:3" and unit.score_after > unit.score_before
    other = str(digits["3"][0])
    morph = pullback.explain(cache, str(authors_dir), path, pullback.Target("looks like another image", other),
                             pullback.Settings(steps=3, alpha=2.0))
    assert morph.score_after > morph.score_before and morph.score_after <= 1 + 1e-9
    plain = pullback.explain(cache, str(authors_dir), path, settings=pullback.Settings(method="gradient", steps=0))
    assert plain.counterfactual is None and "does not rewrite" in plain.coverage


def test_pullback_progress_reports_each_step_and_can_stop(cache, authors_dir, digits):
    seen = []
    pullback.explain(cache, str(authors_dir), str(digits["5"][0]), settings=pullback.Settings(steps=4),
                     progress=lambda f, text: seen.append(text))
    assert sum("counterfactual step" in s for s in seen) == 4

    class Stop(Exception):
        pass

    def stop_at_step_two(fraction, text):
        if "step 2" in text:
            raise Stop

    with pytest.raises(Stop):
        pullback.explain(cache, str(authors_dir), str(digits["5"][0]), settings=pullback.Settings(steps=4),
                         progress=stop_at_step_two)


def test_model_without_a_head_has_no_top_predictions(cache, authors_dir, digits):
    from pellucid.app.cache import LoadedModel

    loaded = cache.get(str(authors_dir))
    headless = LoadedModel("features", loaded.model, loaded.spec, "features", False, None, None)
    top, note = pullback._top(headless, torch.zeros(1, 2048))
    assert top is None and "no classification head" in note


# --------------------------------------------------------------------------- rejection


def test_noise_is_rejected_and_a_key_is_accepted_with_its_class(cache, dictionary_dir):
    loaded = cache.get(str(dictionary_dir))
    model = loaded.model
    trained = model.epsilon
    noise = rejection.classify(cache, str(dictionary_dir), rejection.noise_input((1, 28, 28)))
    assert noise.rejected and noise.min_distance > noise.threshold == pytest.approx(trained)
    assert "REJECTED" in noise.summary()
    key = ((model.keys[7].detach() + 1) / 2).view(1, 1, 28, 28)
    label = loaded.class_names[int(model.values[7].argmax())]
    accepted = rejection.classify(cache, str(dictionary_dir), images.ModelInput(key, ("key 7",), "key"))
    assert not accepted.rejected and accepted.min_distance < 1e-3
    assert accepted.nearest[0][1] == label and max(accepted.scores, key=accepted.scores.get) == label
    assert model.epsilon == trained  # the threshold was restored


def test_threshold_moves_the_decision_and_the_tradeoff_matches_a_count(cache, dictionary_dir):
    noise = rejection.noise_input((1, 28, 28))
    loose = rejection.classify(cache, str(dictionary_dir), noise, factor=2.0)
    assert not loose.rejected and loose.threshold == pytest.approx(2 * cache.get(str(dictionary_dir)).model.epsilon)
    curve = rejection.tradeoff(cache, cache.get(str(dictionary_dir)))
    t = float(curve.min_distance.median())
    coverage, accuracy, noise_rate = curve.at(t)
    kept = curve.min_distance <= t
    assert coverage == pytest.approx(float(kept.double().mean()))
    assert accuracy == pytest.approx(float(curve.correct[kept].double().mean()))
    assert noise_rate == pytest.approx(float((curve.noise_min_distance > t).double().mean()))
    assert loose.tradeoff_figure is not None and "uniform noise" in loose.summary()


def test_the_tradeoff_figure_is_drawn_once_per_threshold_and_shared_read_only(cache, dictionary_dir):
    source = str(dictionary_dir)
    noise = rejection.classify(cache, source, rejection.noise_input((1, 28, 28)), factor=1.25)
    blank = rejection.classify(cache, source, rejection.blank_input((1, 28, 28)), factor=1.25)
    assert blank.tradeoff_figure is noise.tradeoff_figure  # the same picture for every image
    assert not noise.tradeoff_figure.flags.writeable
    with pytest.raises(ValueError):
        noise.tradeoff_figure[0, 0, 0] = 0
    curve = rejection.tradeoff(cache, cache.get(source))
    fresh = rejection.tradeoff_figure(curve, noise.threshold, noise.trained_epsilon)
    assert np.array_equal(fresh, noise.tradeoff_figure)  # what drawing it again gives
    other = rejection.classify(cache, source, rejection.noise_input((1, 28, 28)), factor=1.5)
    assert other.tradeoff_figure is not noise.tradeoff_figure
    assert not np.array_equal(other.tradeoff_figure, noise.tradeoff_figure)  # the marker moved


def test_tradeoff_curve_equals_counting_at_every_threshold():
    """The vectorised curve against a count per threshold, written out: ties at a threshold are
    kept, below every distance nothing is kept (accuracy None / NaN), above every one all are."""
    gen = torch.Generator().manual_seed(0)
    d = torch.randint(0, 20, (300,), generator=gen).double() / 4  # many ties
    correct = torch.rand(300, generator=gen) < 0.7
    noise = torch.randint(0, 40, (50,), generator=gen).double() / 4
    curve = rejection.Tradeoff(d, correct, noise, "toy")
    ts = torch.cat([torch.linspace(-1, 11, 97, dtype=torch.float64), d[:10], noise[:5]])
    coverage, accuracy, rejected = curve.curve(ts)
    for i, t in enumerate(ts.tolist()):
        kept = [k for k in range(300) if float(d[k]) <= t]
        want_acc = sum(bool(correct[k]) for k in kept) / len(kept) if kept else None
        want = (len(kept) / 300, want_acc, sum(float(n) > t for n in noise) / 50)
        assert float(coverage[i]) == pytest.approx(want[0], abs=1e-15)
        assert float(rejected[i]) == pytest.approx(want[2], abs=1e-15)
        if want_acc is None:
            assert math.isnan(float(accuracy[i])) and curve.at(t)[1] is None
        else:
            assert float(accuracy[i]) == pytest.approx(want_acc, abs=1e-15)
        got = curve.at(t)  # one threshold: the same numbers, None for no image kept
        assert got == (float(coverage[i]), None if want_acc is None else float(accuracy[i]), float(rejected[i]))
    assert float(coverage[0]) == 0.0 and float(coverage[96]) == 1.0


def test_cache_builds_each_key_once_and_forgets_the_oldest():
    from pellucid.app.cache import ModelCache

    cache, built = ModelCache(max_derived=2), []
    for key in ("a", "b", "a", "c", "a", "b"):
        assert cache.derived(key, lambda: built.append(key) or key.upper()) == key.upper()
    assert built == ["a", "b", "c", "b"]  # "b" was the least recently used when "c" came
