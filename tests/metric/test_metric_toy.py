"""The 2-D toy pictures: data, distances against slow float64 references, the classifier, figures."""

from __future__ import annotations

import math

import pytest
import torch

from pellucid.viz.toy import (TOY_DISTANCES, ToyClassifier, circles, dissimilarity, fit_toy, plane_grid,
                              plot_neurons, plot_regions, toy_centres, toy_layer, two_moons)


def test_toy_data_is_seeded_balanced_and_shaped():
    for make in (two_moons, circles):
        x, y = make(200, seed=3)
        x2, y2 = make(200, seed=3)
        assert x.shape == (200, 2) and torch.equal(x, x2) and torch.equal(y, y2)
        assert y.bincount().tolist() == [100, 100]
        assert not torch.equal(x, make(200, seed=4)[0])
    x, y = circles(400, noise=0.0)
    r = x.norm(dim=1)
    torch.testing.assert_close(r[y == 0], torch.ones(200))
    torch.testing.assert_close(r[y == 1], torch.full((200,), 0.45))


def _slow(layer, point: torch.Tensor) -> torch.Tensor:
    """One point, float64, straight from each definition."""
    name = layer.__class__.__name__
    if name == "LpDistance":
        c = layer.centres.detach().double()
        return ((point - c).abs() ** layer.p).sum(1) ** (1 / layer.p)
    if name == "CosineSimilarity":
        c = layer.centres.detach().double()
        cos = (c @ point) / (c.norm(dim=1) * point.norm())
        return torch.tensor([math.acos(max(-1.0, min(1.0, float(v)))) for v in cos], dtype=torch.float64)
    if name == "StereoAngle":
        xs = point * float(layer.log_input_scale.detach().exp())
        sq = float((xs ** 2).sum())
        z = torch.cat([2 * xs / (sq + 1), torch.tensor([(sq - 1) / (sq + 1)], dtype=torch.float64)])
        w = layer.weight.detach().double()
        cos = (w / w.norm(dim=1, keepdim=True)) @ z
        return torch.tensor([math.acos(max(-1.0, min(1.0, float(v)))) for v in cos], dtype=torch.float64)
    assert name == "Linear"
    return -(layer.weight.detach().double() @ point + layer.bias.detach().double())


@pytest.mark.parametrize("name", ["l0.5", "l1", "l2", "l20", "cosine", "stereo", "linear"])
@pytest.mark.parametrize("seed", [0, 1])
def test_distances_match_their_definitions(name, seed):
    torch.manual_seed(seed)
    layer = toy_layer(name, 5).double()
    x = torch.randn(7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    got = dissimilarity(layer, x)
    expected = torch.stack([_slow(layer, p) for p in x])
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-7)  # acos: sqrt(rounding) near 0


@pytest.mark.parametrize("name", TOY_DISTANCES)
def test_the_grid_in_one_call_equals_the_grid_in_pieces(name):
    x, y = two_moons(60)
    model = fit_toy(name, x, y, hidden=4, steps=5)
    points, _, _ = plane_grid(2.0, 20)
    with torch.no_grad():
        whole = dissimilarity(model.layer, points)
        pieces = torch.cat([dissimilarity(model.layer, p) for p in points.split(7)])
    assert whole.shape == (400, 4)
    torch.testing.assert_close(whole, pieces, rtol=1e-5, atol=1e-5)


def test_a_local_classifier_fits_the_moons_and_rejects_far_inputs():
    x, y = two_moons(200)
    model = fit_toy("l2", x, y, hidden=8, steps=300)
    with torch.no_grad():
        assert float((model(x).argmax(1) == y).float().mean()) >= 0.95
        assert float(model.rejects(x).float().mean()) <= 0.05
        far = 30 * torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
        assert bool(model.rejects(far).all())
        a = model.activations(far)
        assert bool((a.argmax(1) == 8).all())  # the epsilon neuron (last column) wins
        torch.testing.assert_close(model(far), a[:, :-1] @ model.values)
    assert toy_centres(model.layer).shape == (8, 2)
    assert toy_centres(ToyClassifier("linear").layer) is None


def test_figures_are_written(tmp_path):
    x, y = circles(80)
    models = {name: fit_toy(name, x, y, hidden=4, steps=20) for name in ("l2", "stereo", "invex")}
    for path in (plot_regions(models, x, y, tmp_path / "regions.png", "t", n=30),
                 plot_neurons(models, tmp_path / "neurons.png", n=30)):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
