"""Each layer's math against its definition in the paper / reference, written out plainly."""

import math

import pytest
import torch
import torch.nn.functional as F

from pellucid.nn import AffineFeatures, LogicalFeatures, RotationConvFeatures, TwoStep, normalize
from pellucid.nn.semantic.kernels import max_correlation
from pellucid.nn.geometry import rotate, warp_affine


# -- TwoStep ------------------------------------------------------------------------------------
def _twostep_reference(x, t0, t1, a0, a1, s):
    """Scalar transcription of the piecewise definition (float64, one value at a time)."""
    xt, T0, T1 = 2 * x - 1, 2 * t0 - 1, 2 * t1 - 1

    def u(v, T, sc):
        return (v - T) / (sc + abs(v - T))

    def internal(T, sc, a):
        sigma = T / (sc + abs(T))
        return a * (u(xt, T, sc) + sigma) / abs(sigma)

    def external(T, sc, a):
        D = max(abs(u(-1.0, T, sc)), abs(u(1.0, T, sc))) / (1 - a)
        return u(xt, T, sc) / D + math.copysign(1, T) * a

    if xt < T0:
        return external(T0, s[0], a0)
    if xt < 0:
        return internal(T0, s[1], a0)
    if xt < T1:
        return internal(T1, s[2], a1)
    return external(T1, s[3], a1)


def _learned_twostep():
    layer = TwoStep().double()
    with torch.no_grad():  # the paper's learned values, and uneven scales
        layer.t0.fill_(0.365), layer.t1.fill_(0.556), layer.a0.fill_(0.825), layer.a1.fill_(0.681)
        layer.scales.copy_(torch.tensor([0.05, 0.2, 0.07, 0.3]))
    return layer


def test_twostep_matches_piecewise_definition():
    layer = _learned_twostep()
    x = torch.linspace(0, 1, 257, dtype=torch.float64)
    ref = torch.tensor([_twostep_reference(float(v), 0.365, 0.556, 0.825, 0.681,
                                           [0.05, 0.2, 0.07, 0.3]) for v in x], dtype=torch.float64)
    assert torch.allclose(layer(x), ref, atol=1e-12)


def test_twostep_maps_thresholds_to_levels_and_midpoint_to_zero():
    layer = _learned_twostep()
    x = torch.tensor([0.365, 0.556, 0.5, 0.0, 1.0], dtype=torch.float64)
    y = layer(x)
    assert torch.allclose(y[:3], torch.tensor([-0.825, 0.681, 0.0], dtype=torch.float64), atol=1e-12)
    # each external piece scales by max|u| over the whole input range, so the ends stay in [-1, 1]
    assert -1 <= y[3] < -0.825 and 0.681 < y[4] <= 1
    dense = layer(torch.linspace(0, 1, 10001, dtype=torch.float64))
    assert (dense[1:] >= dense[:-1]).all()  # monotone and continuous across the pieces
    assert (dense[1:] - dense[:-1]).abs().max() < 0.05


def test_twostep_is_batch_independent():
    layer = TwoStep()
    x = torch.rand(5, 1, 28, 28) * 0.5 + 0.25  # no pixel reaches 0 or 1
    alone = torch.stack([layer(x[i:i + 1])[0] for i in range(5)])
    assert torch.equal(layer(x), alone)
    assert torch.equal(layer(torch.cat([x, torch.ones(1, 1, 28, 28)]))[:5], layer(x))


def test_twostep_projection_clips_to_the_constraint_box():
    layer = TwoStep()
    with torch.no_grad():
        layer.t0.fill_(0.7), layer.t1.fill_(0.2), layer.a0.fill_(1.5), layer.scales.fill_(-1)
    layer.project_()
    assert layer.t0.item() == pytest.approx(0.49) and layer.t1.item() == pytest.approx(0.51)
    assert layer.a0.item() == pytest.approx(0.99) and (layer.scales == 0.001).all()


# -- rotation-posed conv -------------------------------------------------------------------------
def test_ninety_degree_pose_equals_rot90():
    k = torch.randn(3, 5, 5, dtype=torch.float64)
    posed = rotate(k, torch.tensor([0.0, 90.0, 180.0, 270.0], dtype=torch.float64))
    for p in range(4):
        assert torch.allclose(posed[:, p], torch.rot90(k, p, dims=(-2, -1)), atol=1e-12)


def test_conv_layer_poses_are_unit_norm_rotations():
    layer = RotationConvFeatures().double()
    posed = layer.posed_weights()[0]  # (64, 5, 5)
    assert posed.shape == (64, 5, 5)
    assert torch.allclose(posed.flatten(1).norm(dim=1), torch.ones(64, dtype=torch.float64))
    assert torch.allclose(posed[8], normalize(torch.rot90(layer.kernels[0], 1, (-2, -1))[None])[0])
    assert sum(p.numel() for p in layer.parameters()) == 50


def test_conv_layer_forward_is_relu_of_max_over_all_posed_kernels_over_five():
    layer = RotationConvFeatures().double()
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    full = F.conv2d(x, layer.posed_weights().reshape(64, 1, 5, 5), padding=2)
    out, pose = layer(x, return_poses=True)
    assert torch.allclose(out, F.relu(full.max(dim=1, keepdim=True).values / 5))
    assert torch.equal(pose, full.argmax(dim=1, keepdim=True))


@pytest.mark.parametrize("channels,kernel,size", [(1, 5, (9, 9)), (2, 3, (6, 11))])
def test_max_correlation_gradients(channels, kernel, size):
    x = torch.randn(3, channels, *size, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, channels, kernel, kernel, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: max_correlation(a, b)[0], (x, w))
    # and against autograd through the dense formulation
    g = torch.randn(3, 1, *size, dtype=torch.float64)
    gx, gw = torch.autograd.grad((max_correlation(x, w)[0] * g).sum(), (x, w))
    dense = F.conv2d(x, w, padding=kernel // 2).max(dim=1, keepdim=True).values
    rx, rw = torch.autograd.grad((dense * g).sum(), (x, w))
    assert torch.allclose(gx, rx) and torch.allclose(gw, rw)
    # one-sided: only the input (attacks) or only the kernels
    only_x = torch.autograd.grad((max_correlation(x, w.detach())[0] * g).sum(), x)[0]
    only_w = torch.autograd.grad((max_correlation(x.detach(), w)[0] * g).sum(), w)[0]
    assert torch.allclose(only_x, rx) and torch.allclose(only_w, rw)


def test_max_correlation_backward_has_the_fold_formulations_bits():
    # The per-tap backward must add the same products in the same order as F.fold / F.unfold +
    # index_add (the formulation it replaced): a faster kernel must not change trained models.
    # Its outputs must also be contiguous: a strided kernel gradient changed downstream sums.
    torch.manual_seed(0)
    x = torch.rand(150, 1, 28, 28, requires_grad=True)
    w = torch.randn(64, 1, 5, 5, requires_grad=True)
    g = torch.randn(150, 1, 28, 28)
    best, idx = max_correlation(x, w)
    gx, gw = torch.autograd.grad(best, (x, w), g)
    assert gx.is_contiguous() and gw.is_contiguous()
    w_flat, flat_idx, flat_g = w.detach().reshape(64, 25), idx.flatten(1), g.flatten(1)
    cols = (w_flat[flat_idx] * flat_g.unsqueeze(-1)).transpose(1, 2)
    ref_gx = F.fold(cols, (28, 28), (5, 5), padding=2)
    patches = F.unfold(x.detach(), (5, 5), padding=2)
    rows = (patches * flat_g.unsqueeze(1)).transpose(1, 2).reshape(-1, 25)
    ref_gw = torch.zeros(64, 25).index_add_(0, flat_idx.reshape(-1), rows).view_as(w)
    assert torch.equal(gx, ref_gx) and torch.equal(gw, ref_gw)


# -- affine features ---------------------------------------------------------------------------
def test_identity_pose_leaves_a_feature_unchanged():
    img = torch.randn(2, 28, 28, dtype=torch.float64)
    eye = torch.eye(2, 3, dtype=torch.float64).expand(2, 1, 2, 3)
    assert torch.allclose(warp_affine(img, eye)[:, 0], img, atol=1e-10)


def test_pose_maps_source_pixels_to_destination_about_top_left():
    img = torch.zeros(1, 28, 28, dtype=torch.float64)
    img[0, 4, 3] = 1.0  # (x, y) = (3, 4)
    shift = torch.tensor([[[1.0, 0, 5], [0, 1, -2]]], dtype=torch.float64)[None]  # +5 px x, -2 px y
    scale = torch.tensor([[[2.0, 0, 0], [0, 2, 0]]], dtype=torch.float64)[None]  # about pixel (0, 0)
    moved = warp_affine(img, shift)[0, 0]
    assert moved[2, 8] == pytest.approx(1.0) and moved.sum() == pytest.approx(1.0)
    assert warp_affine(img, scale)[0, 0][8, 6] == pytest.approx(1.0)


def test_affine_layer_scores_are_max_inner_product_over_poses():
    layer = AffineFeatures().double()
    assert sum(p.numel() for p in layer.parameters()) == 3200 + 1536
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    posed = layer.posed_weights()  # (8, 32, 28, 28)
    assert torch.allclose(posed.flatten(2).norm(dim=-1), torch.ones(8, 32, dtype=torch.float64))
    scores = torch.einsum("bhw,fphw->bfp", x[:, 0], posed)
    out, pose = layer(x, return_poses=True)
    assert torch.allclose(out, scores.max(dim=2).values.clamp_min(0))
    assert torch.equal(pose, scores.argmax(dim=2))


# -- logical features --------------------------------------------------------------------------
def test_logical_layer_equals_closed_form():
    layer = LogicalFeatures().double()
    with torch.no_grad():
        layer.features.copy_(torch.tensor([[1.07, 0.2, -0.3, 0.1, -.78, -.71, -.80, -.81],
                                           [-.81, -.76, -.86, -.80, 0.3, 1.05, 0.0, -0.2]]))
    x = torch.rand(16, 8, dtype=torch.float64)
    f = layer.features.detach()
    v0, v1 = f[0, :4].max(), f[1, 4:].max()
    closed = torch.stack([v0 * x[:, :4].max(1).values + x[:, 4:] @ f[0, 4:],
                          v1 * x[:, 4:].max(1).values + x[:, :4] @ f[1, :4]], 1)
    assert torch.allclose(layer(x), closed, atol=1e-12)


def test_logical_layer_trains_only_the_top_entry_of_its_own_block():
    layer = LogicalFeatures()
    layer(torch.rand(8, 8)).sum().backward()
    g = layer.features.grad
    assert torch.count_nonzero(g[0, :4]) == 1 and g[0, 0] != 0  # init: own top entry is index 0
    assert torch.count_nonzero(g[1, 4:]) == 1 and g[1, 4] != 0
    assert (g[0, 4:] != 0).all() and (g[1, :4] != 0).all()


def test_paper_init_of_logical_layer():
    f = LogicalFeatures().features
    assert f[0].tolist() == pytest.approx([.4, -.1, -.1, -.1, -.1, -.1, -.1, -.1])
    assert f[1].tolist() == pytest.approx([-.1, -.1, -.1, -.1, .4, -.1, -.1, -.1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_twostep_eval_path_has_the_train_graphs_bits(seed):
    """Eval mode runs a fused single-piece path with a hand-written input gradient: values and
    input gradients must equal autograd on the four-piece train graph exactly, including pixels
    exactly at the thresholds and at 0 / 1."""
    gen = torch.Generator().manual_seed(seed)
    layer = TwoStep()
    if seed:
        with torch.no_grad():  # random points of the constraint box
            for p, (lo, hi) in ((layer.t0, (0.01, 0.49)), (layer.t1, (0.51, 0.99)),
                                (layer.a0, (0.01, 0.99)), (layer.a1, (0.01, 0.99)),
                                (layer.scales, (0.001, 2.0))):
                p.copy_(lo + (hi - lo) * torch.rand(p.shape, generator=gen))
    x = torch.rand(64, 1, 28, 28, generator=gen)
    x[0, 0, 0, :5] = torch.tensor([layer.t0.item(), layer.t1.item(), 0.5, 0.0, 1.0])
    x[1] = (x[1] > 0.7).float()  # MNIST-like: mostly exact 0 and 1
    g = torch.randn(x.shape, generator=gen)
    results = []
    for train in (True, False):
        xi = x.clone().requires_grad_(True)
        y = layer.train(train)(xi)
        results.append((y.detach(), torch.autograd.grad(y, xi, g)[0]))
    (y_train, g_train), (y_eval, g_eval) = results
    assert torch.equal(y_train, y_eval)
    assert torch.equal(g_train, g_eval)


def test_twostep_eval_path_gives_parameters_no_gradient():
    layer = TwoStep().eval()
    layer(torch.rand(2, 1, 4, 4, requires_grad=True)).sum().backward()
    assert all(p.grad is None for p in layer.parameters())


def _twostep_where_graph(layer, x):
    """The train graph as first written (nested torch.where); the layer selects pieces by lerp."""
    xt = 2 * x - 1
    big_t0, big_t1 = 2 * layer.t0 - 1, 2 * layer.t1 - 1
    s0, s1, s2, s3 = layer.scales.unbind()
    return torch.where(
        xt < 0,
        torch.where(xt < big_t0, layer._external(xt, big_t0, s0, layer.a0),
                    layer._internal(xt, big_t0, s1, layer.a0)),
        torch.where(xt < big_t1, layer._internal(xt, big_t1, s2, layer.a1),
                    layer._external(xt, big_t1, s3, layer.a1)))


def test_twostep_train_graph_has_the_where_graphs_parameter_gradient_bits():
    """Selecting by lerp must leave values and every parameter gradient bit-identical (so models
    trained before the change are reproduced exactly); building the pieces in another order
    changes autograd's summation order and breaks this."""
    gen = torch.Generator().manual_seed(7)
    layer = TwoStep()
    with torch.no_grad():
        layer.t0.fill_(0.31), layer.t1.fill_(0.62), layer.a0.fill_(0.7), layer.a1.fill_(0.4)
        layer.scales.copy_(torch.tensor([0.05, 0.3, 0.9, 0.01]))
    x = (torch.rand(200, 1, 28, 28, generator=gen) > 0.8).float()
    x = (x + 0.25 * torch.randn(x.shape, generator=gen) + 0.05).clamp(0, 1)  # the noise augmentation
    g = torch.randn(x.shape, generator=gen)
    y = layer(x)
    y_ref = _twostep_where_graph(layer, x)
    assert torch.equal(y, y_ref)
    params = list(layer.parameters())
    for got, ref in zip(torch.autograd.grad(y, params, g), torch.autograd.grad(y_ref, params, g)):
        assert torch.equal(got, ref)


def _random_twostep(gen, dtype=torch.float32):
    """A TwoStep at a random point of its constraint box."""
    layer = TwoStep().to(dtype)
    with torch.no_grad():
        for p, (lo, hi) in ((layer.t0, (0.01, 0.49)), (layer.t1, (0.51, 0.99)), (layer.a0, (0.01, 0.99)),
                            (layer.a1, (0.01, 0.99)), (layer.scales, (0.001, 2.0))):
            p.copy_(lo + (hi - lo) * torch.rand(p.shape, generator=gen, dtype=dtype))
    return layer


def _mnist_like(gen, dtype=torch.float32, n=64):
    """Mostly exact 0 and 1 with the recipe's noise, plus pixels exactly at 0, 0.5 and 1."""
    x = (torch.rand(n, 1, 28, 28, generator=gen, dtype=dtype) > 0.8).to(dtype)
    x[n // 2:] = (x[n // 2:] + 0.25 * torch.randn(x[n // 2:].shape, generator=gen, dtype=dtype) + 0.05).clamp(0, 1)
    x[0, 0, 0, :3] = torch.tensor([0.0, 0.5, 1.0], dtype=dtype)
    return x


def _graph_results(layer, x, g):
    """Values and parameter gradients of TwoStep's train graph (all four pieces, autograd)."""
    from pellucid.nn.semantic.twostep import _train_graph

    params = list(layer.parameters())
    y = _train_graph(x, *params)
    return y, torch.autograd.grad(y, params, g)


needs_c = pytest.mark.skipif(__import__("pellucid.nn.semantic._cpu_kernels", fromlist=["library"]).library() is None,
                             reason="no C kernels (no compiler)")


@needs_c
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_twostep_training_path_has_the_train_graphs_bits(dtype):
    """Training runs each pixel's own piece and hand-written parameter gradients (one C pass,
    torch sums, the scalar chain by autograd's formulas in its engine's order): values and every
    parameter gradient must equal autograd on the four-piece graph bit for bit. A different
    order of adding any parameter's contributions fails this within a few draws."""
    gen = torch.Generator().manual_seed(3)
    for _ in range(12):
        layer = _random_twostep(gen, dtype)
        x = _mnist_like(gen, dtype)
        x[1, 0, 0, :2] = torch.stack([layer.t0, layer.t1]).detach()  # exactly at the thresholds
        g = torch.randn(x.shape, generator=gen, dtype=dtype)
        y = layer(x)
        assert type(y.grad_fn).__name__ == "_TwoStepTrainingBackward"  # the path under test ran
        y_ref, grads_ref = _graph_results(layer, x, g)
        assert torch.equal(y.view(-1), y_ref.view(-1))
        assert torch.equal(torch.signbit(y), torch.signbit(y_ref))
        for got, ref in zip(torch.autograd.grad(y, list(layer.parameters()), g), grads_ref):
            assert torch.equal(got, ref)


@needs_c
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_twostep_training_gradients_equal_the_graphs_at_any_thread_count(threads):
    gen = torch.Generator().manual_seed(5)
    layer = _random_twostep(gen)
    x, g = _mnist_like(gen, n=200), torch.randn(200, 1, 28, 28, generator=gen)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # torch's own sums, and so autograd's, depend on the thread count
    try:
        grads = torch.autograd.grad(layer(x), list(layer.parameters()), g)
        reference = _graph_results(layer, x, g)[1]
    finally:
        torch.set_num_threads(before)
    for got, ref in zip(grads, reference):
        assert torch.equal(got, ref)


@needs_c
def test_twostep_training_with_non_finite_values_gives_the_graphs_results():
    """A NaN or infinite incoming gradient, input or parameter: the train graph's own numbers
    (its 0 * inf terms of unpicked pieces make NaN where the own-piece sums would not)."""
    gen = torch.Generator().manual_seed(9)
    cases = []
    layer, x, g = _random_twostep(gen), _mnist_like(gen), torch.randn(64, 1, 28, 28, generator=gen)
    g_bad = g.clone()
    g_bad[3, 0, 5, 5], g_bad[4, 0, 1, 1] = float("inf"), float("nan")
    cases.append((layer, x, g_bad))
    x_bad = x.clone()
    x_bad[2, 0, 7, 7], x_bad[5, 0, 0, 0] = float("nan"), -float("inf")
    cases.append((layer, x_bad, g))
    layer_bad = _random_twostep(gen)
    with torch.no_grad():
        layer_bad.scales[2] = float("inf")
    cases.append((layer_bad, x, g))
    for lay, xx, gg in cases:
        y = lay(xx)
        got = torch.autograd.grad(y, list(lay.parameters()), gg)
        y_ref, ref = _graph_results(lay, xx, gg)
        torch.testing.assert_close(y, y_ref, rtol=0, atol=0, equal_nan=True)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
        assert any(t.isnan().any() for t in got)  # the cases do reach the gradients


@needs_c
def test_twostep_training_is_safe_under_threads():
    """Each thread has its own scratch rows for the gradient terms: eight threads training
    different layers on different batches at once get what each gets alone."""
    import threading

    gen = torch.Generator().manual_seed(8)
    jobs = [(_random_twostep(gen), _mnist_like(gen, n=100), torch.randn(100, 1, 28, 28, generator=gen))
            for _ in range(8)]
    alone = [torch.autograd.grad(layer(x), list(layer.parameters()), g) for layer, x, g in jobs]
    together, start = [None] * len(jobs), threading.Barrier(len(jobs))

    def run(i):
        layer, x, g = jobs[i]
        start.wait()
        for _ in range(5):
            together[i] = torch.autograd.grad(layer(x), list(layer.parameters()), g)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, ref in zip(together, alone):
        assert all(torch.equal(a, b) for a, b in zip(got, ref))


def test_twostep_training_takes_the_graph_for_input_gradients_and_without_c(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    layer, x = _random_twostep(gen), _mnist_like(gen)
    xi = x.clone().requires_grad_(True)  # an input gradient (e.g. adversarial training): the graph
    y = layer(xi)
    assert type(y.grad_fn).__name__ == "LerpBackward1"
    assert torch.autograd.grad(y.sum(), xi)[0].abs().sum() > 0
    monkeypatch.setenv("PELLUCID_CPU_KERNELS", "0")
    assert type(layer(x).grad_fn).__name__ == "LerpBackward1"
    assert layer(x[:0]).shape == (0, 1, 28, 28)


def test_max_correlation_index_is_max_first_index_with_ties():
    # the fast argmax must return what scores.max(dim=1) returns, including the first of tied
    # kernels (all-zero patches tie every kernel at 0; duplicated kernels tie everywhere)
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        x = torch.rand(13, 1, 17, 17, dtype=dtype)
        x[:, :, :6, :6] = 0
        w = torch.randn(10, 1, 5, 5, dtype=dtype)
        w[7] = w[2]  # exact ties between kernels 2 and 7
        w[4] = -w[4]
        v, i = F.conv2d(x, w, padding=2).max(dim=1)
        best, idx = max_correlation(x, w)
        assert torch.equal(best[:, 0], v) and torch.equal(idx, i)
        assert (idx == 0).any() and (idx != 7).all()  # ties went to the first kernel


@pytest.mark.filterwarnings("ignore:Since version 1.3.0, affine_grid")  # torch's note on unit-size grids
@pytest.mark.parametrize("size", [(1, 1, 1), (3, 1, 7), (5, 9, 1), (256, 28, 28), (2, 2, 3)])
def test_affine_grid_gradient_is_torchs_bit_for_bit(size):
    """The backward builds torch's base grid once and runs torch's product: theta's gradient must
    be the one autograd computes for F.affine_grid, unit-size grids (coordinate 0) included."""
    from pellucid.nn.geometry import affine_grid

    n, h, w = size
    gen = torch.Generator().manual_seed(n * 100 + h * 10 + w)
    for dtype in (torch.float32, torch.float64):
        theta = (torch.eye(2, 3, dtype=dtype) + 0.3 * torch.randn(n, 2, 3, generator=gen, dtype=dtype)).requires_grad_()
        ours, ref = affine_grid(theta, h, w), F.affine_grid(theta, [n, 1, h, w], align_corners=True)
        assert torch.allclose(ours, ref, atol=1e-6, rtol=0)
        g = torch.randn(n, h, w, 2, generator=gen, dtype=dtype)
        assert torch.equal(torch.autograd.grad(ours, theta, g)[0], torch.autograd.grad(ref, theta, g)[0])


def test_affine_grid_matches_torch_values_and_gradient():
    from pellucid.nn.geometry import affine_grid

    torch.manual_seed(0)
    for dtype, tol in ((torch.float32, 1e-6), (torch.float64, 1e-14)):
        theta = (torch.eye(2, 3, dtype=dtype) + 0.3 * torch.randn(40, 2, 3, dtype=dtype)).requires_grad_()
        ours, ref = affine_grid(theta, 28, 20), F.affine_grid(theta, [40, 1, 28, 20], align_corners=True)
        assert ours.shape == ref.shape == (40, 28, 20, 2)
        assert torch.allclose(ours, ref, atol=tol, rtol=0)
        g = torch.randn_like(ref)
        (ours_g,), (ref_g,) = torch.autograd.grad(ours, theta, g), torch.autograd.grad(ref, theta, g)
        assert torch.equal(ours_g, ref_g)  # the same backward op
    theta64 = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: affine_grid(t, 5, 4), (theta64,))
    with pytest.raises(ValueError, match="theta must be"):
        affine_grid(torch.zeros(3, 3, 3), 5, 5)


def test_reset_parameters_redraws_the_construction_time_initialisation():
    """reset_parameters (used by the parameter-randomisation sanity check) draws exactly what the
    constructor draws: same seed, same tensors; another seed, other tensors."""
    from pellucid.nn.semantic.affine_features import AffineFeatures
    from pellucid.nn.semantic.rotation_conv import RotationConvFeatures

    for cls, names in ((RotationConvFeatures, ("kernels",)), (AffineFeatures, ("features", "poses"))):
        torch.manual_seed(5)
        layer = cls()
        built = {n: getattr(layer, n).detach().clone() for n in names}
        torch.manual_seed(5)
        layer.reset_parameters()
        assert all(torch.equal(getattr(layer, n), built[n]) for n in names)
        layer.reset_parameters()
        assert not any(torch.equal(getattr(layer, n), built[n]) for n in names)
