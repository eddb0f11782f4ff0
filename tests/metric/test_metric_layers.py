"""Metric layers and similarities against slow references written here from the formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from pellucid.errors import InvalidInputError
from pellucid.nn import (ConvexDistance, CosineSimilarity, EpsilonSoftmax, InvexDistance, L2DistanceConv2d,
                         LpDistance, MetricConv2d, StereoAngle, l2_distance_conv2d, min_exp_similarity,
                         umap_similarity)
from pellucid.nn.metric.conv import l2_distance_unfold_cdist, lp_distance_conv2d


def slow_lp(x, c, p):
    out = torch.empty(x.shape[0], c.shape[0], dtype=x.dtype)
    for b in range(x.shape[0]):
        for j in range(c.shape[0]):
            out[b, j] = sum(abs(float(x[b, i] - c[j, i])) ** p for i in range(x.shape[1])) ** (1 / p)
    return out


@pytest.mark.parametrize("p", [0.5, 1.0, 2.0, 3.0, 20.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_lp_distance_standardised_matches_formula(p, seed):
    torch.manual_seed(seed)
    layer = LpDistance(6, 5, p=p).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    d = slow_lp(x, layer.centres.detach(), p)
    torch.testing.assert_close(layer.distances(x), d, rtol=1e-9, atol=1e-9)
    mean = d.mean(1, keepdim=True)
    std = torch.sqrt(((d - mean) ** 2).sum(1, keepdim=True) / (d.shape[1] - 1))
    torch.testing.assert_close(layer(x), -(d - mean) / (std + 1e-5), rtol=1e-9, atol=1e-9)


def _lp_against_cdist(p, compiled):
    """Values and both gradients of lp_distance and torch.cdist, including cdist's conventions
    where the derivative does not exist: a coordinate equal to the centre's, and an exact hit."""
    from pellucid.nn.metric.distance import lp_distance
    torch.manual_seed(0)
    x = torch.randn(7, 9, dtype=torch.float64)
    c = torch.randn(11, 9, dtype=torch.float64)
    c[1, 2] = x[0, 2]
    c[2] = x[1]
    weights = torch.randn(7, 11, dtype=torch.float64)
    results = []
    for distance in (lambda a, b: torch.cdist(a, b, p=p), lambda a, b: lp_distance(a, b, p, compiled=compiled)):
        a, b = x.clone().requires_grad_(), c.clone().requires_grad_()
        d = distance(a, b)
        (d * weights).sum().backward()
        results.append((d.detach(), a.grad, b.grad))
    for ours, reference in zip(results[1], results[0]):
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("p", [0.3, 0.5, 1.5, 3.0, 20.0])
def test_general_p_distance_matches_cdist_values_and_gradients(p):
    from pellucid.nn.metric.distance import lp_distance
    _lp_against_cdist(p, compiled=False)  # the blocked eager path
    assert torch.autograd.gradcheck(lambda a, b: lp_distance(a, b, p),
                                    (torch.randn(3, 5, dtype=torch.float64, requires_grad=True),
                                     torch.randn(4, 5, dtype=torch.float64, requires_grad=True)))


@pytest.mark.parametrize("p", [0.5, 1.0, 3.0])
def test_compiled_lp_kernels_match_cdist_values_and_gradients(p):
    # torch.compile'd loops (an opt-in execution option): same math, same zero conventions
    try:
        _lp_against_cdist(p, compiled=True)
    except InvalidInputError as e:  # no C++ compiler for torch.compile on this machine
        pytest.skip(str(e))


@pytest.mark.parametrize("convex", [True, False])
def test_compiled_convex_distance_matches_the_eager_path_values_and_gradients(convex):
    # the compiled hidden term never holds (B, H, hidden); same values and every gradient, in float64,
    # including pre-activations above softplus' linear threshold (20)
    from pellucid.nn.metric.distance import ConvexDistance

    torch.manual_seed(0)
    layer = ConvexDistance(9, 11, hidden=13, convex=convex).double()
    with torch.no_grad():
        layer.inner.bias[0] = 40.0
        layer.inner.bias[1] = -40.0
    x, weights = torch.randn(7, 9, dtype=torch.float64), torch.randn(7, 11, dtype=torch.float64)
    results = []
    for compiled in (False, True):
        layer.compiled = compiled
        layer.zero_grad()
        a = x.clone().requires_grad_()
        try:
            y = layer(a)
            (y * weights).sum().backward()
        except InvalidInputError as e:  # no C++ compiler for torch.compile on this machine
            pytest.skip(str(e))
        results.append([y.detach(), a.grad] + [p.grad.clone() for p in layer.parameters()])
    assert len(results[1]) == 2 + len(list(layer.parameters()))
    for ours, reference in zip(results[1], results[0]):
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)


def test_euclidean_distance_is_exact_near_zero_and_matches_the_difference_elsewhere():
    from pellucid.nn.metric.distance import euclidean_distance

    g = torch.Generator().manual_seed(3)
    centres = torch.rand(100, 784, generator=g) * 2 - 1  # signed images: |c|^2 ~ 260
    x = torch.cat([centres[[7, 42]], centres[[5]] + 1e-3, torch.rand(3, 784, generator=g) * 2 - 1])
    x.requires_grad_(True)
    d = euclidean_distance(x, centres)
    reference = (x.detach()[:, None, :].double() - centres[None].double()).norm(dim=-1)
    # The matrix-multiply form alone is off by ~1e-2 here (sqrt of its rounding); the near pairs
    # must come out at the difference's value.
    values = d.detach()
    assert float(values[0, 7]) < 1e-6 and float(values[1, 42]) < 1e-6
    assert float(values[2, 5]) == pytest.approx(float(reference[2, 5]), rel=1e-4)
    torch.testing.assert_close(values.double(), reference, rtol=1e-5, atol=1e-4)
    # Gradients: (x - c) / d on both paths, 0 at d = 0 (no NaN).
    d[:, [5, 7, 42]].sum().backward()
    expected = torch.zeros_like(x, dtype=torch.float64)
    for j in (5, 7, 42):
        diff = x.detach().double() - centres[j].double()
        norm = diff.norm(dim=1, keepdim=True)
        expected += torch.where(norm > 0, diff / norm.clamp_min(1e-300), torch.zeros_like(diff))
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad.double(), expected, rtol=1e-3, atol=1e-3)


def test_general_p_distance_blocks_cover_every_centre(monkeypatch):
    # Force blocks of 3 centres so that 10 centres end in a partial block.
    from pellucid.nn.metric import distance
    monkeypatch.setattr(distance, "_LP_BLOCK_ELEMENTS", 3 * 4 * 6)
    torch.manual_seed(1)
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    c = torch.randn(10, 6, dtype=torch.float64, requires_grad=True)
    d = distance.lp_distance(x, c, 0.5)
    d.pow(2).sum().backward()
    x2, c2 = x.detach().clone().requires_grad_(), c.detach().clone().requires_grad_()
    torch.cdist(x2, c2, p=0.5).pow(2).sum().backward()
    torch.testing.assert_close(d, torch.cdist(x2, c2, p=0.5))
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(c.grad, c2.grad)
    x3 = x.detach().clone().requires_grad_()  # centres fixed: only the input gradient
    distance.lp_distance(x3, c.detach(), 0.5).sum().backward()
    assert x3.grad.shape == x.shape


def test_lp_simple_variant_and_gradients():
    torch.manual_seed(0)
    layer = LpDistance(3, 4, p=2, variant="simple").double()
    with torch.no_grad():
        layer.log_scale.fill_(0.3)
    x = torch.randn(5, 3, dtype=torch.float64)
    expected = (1 - slow_lp(x, layer.centres.detach(), 2)) * math.exp(0.3)
    torch.testing.assert_close(layer(x), expected)
    assert torch.autograd.gradcheck(lambda c: torch.cdist(x, c, p=1.5), (layer.centres.detach().clone().requires_grad_(),))


def test_stereo_angle_is_unit_row_cosine_on_sphere():
    torch.manual_seed(0)
    layer = StereoAngle(3, 4).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    xs = x * layer.log_input_scale.exp().item()
    sq = (xs ** 2).sum(1, keepdim=True)
    z = torch.cat([2 * xs / (sq + 1), (sq - 1) / (sq + 1)], 1)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(6, dtype=torch.float64))  # on S^D
    w = layer.weight.detach()
    expected = z @ (w / w.norm(dim=1, keepdim=True)).T + layer.bias.detach()
    torch.testing.assert_close(layer(x), expected)
    assert layer(x).abs().max() <= 1 + 1e-9  # bias starts at 0: a cosine


def test_cosine_similarity():
    torch.manual_seed(1)
    layer = CosineSimilarity(4, 3).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    c = layer.centres.detach()
    ref = torch.tensor([[float(x[b] @ c[j] / (x[b].norm() * c[j].norm())) for j in range(3)] for b in range(5)],
                       dtype=torch.float64)
    torch.testing.assert_close(layer(x), ref)


def test_convex_distance_is_convex_and_matches_definition():
    torch.manual_seed(0)
    layer = ConvexDistance(3, 2, hidden=7).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    c = layer.centres.detach()
    u = x[:, None, :] - c[None]  # (B, H, D)
    f = (F.softplus(u @ layer.inner.weight.detach().T + layer.inner.bias.detach()) @ F.softplus(layer.raw_outer.detach())
         + u @ layer.skip.detach() + 0.5 * (u ** 2).sum(-1) * layer.log_quadratic.exp().item())
    torch.testing.assert_close(layer.convex_value(x), f)
    # midpoint convexity along random segments
    a, b = torch.randn(50, 3, dtype=torch.float64), torch.randn(50, 3, dtype=torch.float64)
    fa, fb, fm = layer.convex_value(a), layer.convex_value(b), layer.convex_value((a + b) / 2)
    assert bool((fm <= (fa + fb) / 2 + 1e-12).all())


def test_unconstrained_convex_network_is_an_ordinary_network_of_the_difference():
    torch.manual_seed(0)
    layer = ConvexDistance(3, 2, hidden=7, convex=False).double()
    with torch.no_grad():
        layer.raw_outer[:3] = -1.0  # outer weights of any sign are used as they are
    x = torch.randn(4, 3, dtype=torch.float64)
    u = x[:, None, :] - layer.centres.detach()[None]
    f = (F.softplus(u @ layer.inner.weight.detach().T + layer.inner.bias.detach()) @ layer.raw_outer.detach()
         + u @ layer.skip.detach())  # no softplus on the outer weights, no quadratic term
    torch.testing.assert_close(layer.convex_value(x), f)
    a, b = torch.randn(200, 3, dtype=torch.float64), torch.randn(200, 3, dtype=torch.float64)
    fa, fb, fm = layer.convex_value(a), layer.convex_value(b), layer.convex_value((a + b) / 2)
    assert bool((fm > (fa + fb) / 2 + 1e-9).any())  # and it is no longer convex


def test_invex_distance_is_invertible_with_a_single_minimum_per_neuron():
    torch.manual_seed(0)
    layer = InvexDistance(5, 3, hidden=16).double()
    x = torch.randn(64, 5, dtype=torch.float64)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.05)
    for _ in range(30):  # large steps: the spectral caps must hold while the weights move
        optimizer.zero_grad()
        layer(x).pow(2).mean().neg().backward()  # push the distances apart
        optimizer.step()
    norms = lambda: torch.stack([torch.linalg.matrix_norm(linear.weight, ord=2)  # noqa: E731
                                 for linear in layer.flow[1].layers]).detach()
    # power iteration underestimates sigma while the weights move, but the block stays contractive
    assert norms().prod() < 1
    with torch.no_grad():  # more power iterations on the final weights: the cap itself is exact
        for _ in range(40):
            layer(x)
    layer.eval()
    assert (norms() <= 0.97 + 1e-6).all()
    res = layer.flow[1]
    z = torch.randn(64, 5, dtype=torch.float64)
    torch.testing.assert_close(res.inverse(res(z), iterations=400), z, rtol=1e-8, atol=1e-8)
    # f(x - c_j) = ||g(x - c_j) - r|| is 0 exactly at x = c_j + g^{-1}(r), and positive elsewhere
    best = layer.centres.detach() + layer.argmin_offset(iterations=400)  # (H, D)
    values = layer.invex_value(best)  # row j: input = neuron j's minimiser
    assert values.diagonal().abs().max() < 1e-7
    assert (layer.invex_value(x) > 1e-3).all()
    torch.testing.assert_close(layer(x), layer.invex_value(x) * layer.log_scale.exp())
    # the module's formula, written out
    diff = x[:7, None, :] - layer.centres[None]
    expected = (layer.flow(diff.reshape(-1, 5)) - layer.reference).norm(dim=1).view(7, 3) * layer.log_scale.exp()
    torch.testing.assert_close(layer(x[:7]), expected)


@pytest.mark.parametrize("contractive", [True, False])
def test_invex_distance_split_first_layer_equals_the_flow_on_every_difference(contractive):
    # invex_value never runs the residual block's first layer on the B*H differences; it must
    # still equal ||g(x - c_j) - r|| computed literally, values and every parameter gradient,
    # through the ActNorm initialisation and the spectral norm's power iterations.
    import copy
    torch.manual_seed(0)
    layer = InvexDistance(12, 5, hidden=9, contractive=contractive).double()
    literal = copy.deepcopy(layer)
    x = torch.randn(7, 12, dtype=torch.float64)

    def flow_on_differences(m):
        diff = (x[:, None, :] - m.centres[None]).reshape(-1, 12)
        return (m.flow(diff) - m.reference).norm(dim=1).view(7, 5) * m.log_scale.exp()

    for train in (True, True, False):
        layer.train(train), literal.train(train)
        ours, reference = layer(x), flow_on_differences(literal)
        torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
        for a, b in zip(torch.autograd.grad(ours.sum(), list(layer.parameters())),
                        torch.autograd.grad(reference.sum(), list(literal.parameters()))):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("contractive", [True, False])
def test_invex_factored_output_is_the_same_function_and_gradient(contractive):
    # ||g - r||^2 = ||p||^2 + 2 (W~^T p).a + a^T Q a: values, the input gradient and every
    # parameter gradient equal the literal flow on every difference, through the first training
    # call (the ActNorms' initialisation runs the direct path), training steps and eval mode
    import copy
    torch.manual_seed(1)
    layer = InvexDistance(12, 5, hidden=9, contractive=contractive, factored_output=True).double()
    literal = copy.deepcopy(layer)
    calls = []
    factored_norm = layer._factored_norm
    layer._factored_norm = lambda *a: calls.append(1) or factored_norm(*a)
    x = torch.randn(7, 12, dtype=torch.float64, requires_grad=True)

    def flow_on_differences(m):
        diff = (x[:, None, :] - m.centres[None]).reshape(-1, 12)
        return (m.flow(diff) - m.reference).norm(dim=1).view(7, 5) * m.log_scale.exp()

    for step, train in enumerate((True, True, True, False)):
        layer.train(train), literal.train(train)
        ours, reference = layer(x), flow_on_differences(literal)
        assert len(calls) == step  # the first call initialised the ActNorms directly
        torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
        for a, b in zip(torch.autograd.grad(ours.square().sum(), [x, *layer.parameters()]),
                        torch.autograd.grad(reference.square().sum(), [x, *literal.parameters()])):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        with torch.no_grad():  # move the weights, as training does, so later calls differ
            for p, q in zip(layer.parameters(), literal.parameters()):
                noise = torch.randn_like(p) * 0.05
                p.add_(noise), q.add_(noise)


def test_invex_factored_output_in_float32_and_at_a_neurons_minimum():
    torch.manual_seed(2)
    layer = InvexDistance(40, 6, hidden=30)
    x = torch.rand(16, 40) * 2 - 1
    layer(x)  # initialise the ActNorms
    layer.eval()
    direct = layer(x)
    layer.factored_output = True
    torch.testing.assert_close(layer(x), direct, rtol=1e-4, atol=1e-5)
    # at x = c_j + g^{-1}(r) the direct norm is ~0; the sum of three terms is the square root of
    # the rounding there: small, finite, never NaN, with a finite gradient
    best = (layer.centres.detach() + layer.argmin_offset(iterations=300)).requires_grad_()
    values = layer.invex_value(best).diagonal()
    assert values.isfinite().all() and (values >= 0).all() and values.max() < 0.05
    assert torch.autograd.grad(values.sum(), best)[0].isfinite().all()
    # an exact hit of neuron 0's minimum in float32 (r = g(x_0 - c_0)): small, with a finite gradient
    layer.reference.data = layer.flow(layer.centres.detach()[:1] * 0 + x[:1] - layer.centres.detach()[:1])[0]
    hit = x[:1].clone().requires_grad_()
    value = layer.invex_value(hit)[0, 0]
    assert 0 <= value < 0.05
    assert torch.autograd.grad(value, hit)[0].isfinite().all()


def test_quadratic_form_backward_matches_autograd_of_the_literal_form():
    from pellucid.nn.metric.invex import _QuadraticForm
    torch.manual_seed(3)
    a = torch.randn(11, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda a, w: _QuadraticForm.apply(a, w.t() @ w), (a, w))  # Q symmetric
    literal = torch.einsum("ni,ij,nj->n", a, w.t() @ w, a)
    ours = _QuadraticForm.apply(a, w.t() @ w)
    torch.testing.assert_close(ours, literal)
    g = torch.randn(11, dtype=torch.float64)
    ours = torch.autograd.grad(ours, [a, w], g)
    reference = torch.autograd.grad(literal, [a, w], g)
    for x, y in zip(ours, reference):
        torch.testing.assert_close(x, y)


def _invex_value_by_subtraction(layer, x):
    """``InvexDistance.invex_value`` written with plain broadcast subtractions and ``2 a Q g`` as
    the quadratic form's input gradient: the formulation the Table 1 runs started with."""
    import torch.nn.functional as F

    class Quadratic(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a, q):
            aq = a @ q
            ctx.save_for_backward(a, aq)
            return (aq * a).sum(-1)

        @staticmethod
        def backward(ctx, grad):
            a, aq = ctx.saved_tensors
            return 2 * aq * grad[:, None], (a * grad[:, None]).t() @ a

    first_norm, block, last_norm = layer.flow
    (b, d), h = x.shape, layer.out_features
    first, scale = block.layers[0], (-first_norm.log_scale).exp()
    u = (F.linear((x - first_norm.shift) * scale, first.weight, first.bias)[:, None]
         - F.linear(layer.centres * scale, first.weight)[None])
    hidden = block.hidden_after_first(u.reshape(b * h, -1)).view(b, h, -1)
    if not layer.factored_output:
        z = first_norm((x[:, None, :] - layer.centres[None]).reshape(-1, d))
        g = last_norm(z + block.layers[2](hidden.reshape(b * h, -1)))
        return (g - layer.reference).norm(dim=1).view(b, h)
    last, out_scale = block.layers[2], (-last_norm.log_scale).exp()
    scaled = last.weight * out_scale[:, None]
    k = out_scale * (-first_norm.log_scale).exp()
    p_x = (x - first_norm.shift) * k + (last.bias - last_norm.shift) * out_scale - layer.reference
    p_c = layer.centres * k
    p_sq = p_x.square().sum(-1)[:, None] + p_c.square().sum(-1)[None] - 2 * p_x @ p_c.t()
    cross = ((p_x @ scaled)[:, None] - (p_c @ scaled)[None]) * hidden
    gram = scaled.t() @ scaled
    quadratic = Quadratic.apply(hidden.reshape(b * h, -1), (gram + gram.t()) / 2).view_as(p_sq)
    squared = p_sq + 2 * cross.sum(-1) + quadratic
    return torch.where(squared > 0, squared.clamp_min(torch.finfo(squared.dtype).tiny).sqrt(), 0)


@pytest.mark.parametrize("factored", [False, True])
@pytest.mark.parametrize("contractive", [True, False])
def test_invex_training_step_is_bit_identical_to_the_subtraction_form(factored, contractive):
    """float32, as trained: the value and every gradient equal the literal formulation's bit for
    bit, so a run resumed across the change continues exactly as it would have."""
    from pellucid.nn.metric.invex import InvexDistance
    torch.manual_seed(5)
    layer = InvexDistance(40, 30, hidden=24, contractive=contractive, factored_output=factored)
    x = torch.randn(16, 40)
    layer(x)  # training mode: the ActNorms initialise from this batch (the direct path)
    with torch.no_grad():  # move the parameters off their initial values
        for param in layer.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    layer.eval()  # no power iteration: both read the same capped weights
    x = torch.randn(16, 40, requires_grad=True)
    g = torch.randn(16, 30)
    names, params = zip(*((n, p) for n, p in layer.named_parameters() if n != "log_scale"))
    ours = layer.invex_value(x)
    grads = torch.autograd.grad(ours, [x, *params], g)
    theirs = _invex_value_by_subtraction(layer, x)
    reference = torch.autograd.grad(theirs, [x, *params], g)
    assert torch.equal(ours, theirs)
    for name, a, b in zip(["x", *names], grads, reference):
        assert torch.equal(a, b), name


def test_soft_spectral_norm_caps_only_large_weights_and_ordinary_is_unconstrained():
    from pellucid.nn.metric.invex import SoftSpectralNorm
    torch.manual_seed(0)
    small = torch.randn(6, 4, dtype=torch.float64)
    small = small / torch.linalg.matrix_norm(small, ord=2) * 0.5
    cap = SoftSpectralNorm(small, coeff=0.97, n_power_iterations=50).double()
    torch.testing.assert_close(cap(small), small)  # already below the cap: unchanged
    large = small * 10
    capped = cap(large)
    torch.testing.assert_close(torch.linalg.matrix_norm(capped, ord=2), torch.tensor(0.97, dtype=torch.float64))
    ordinary = InvexDistance(5, 3, hidden=16, contractive=False)
    assert not any(hasattr(linear, "parametrizations") for linear in ordinary.flow[1].layers)


def test_conv_l2_is_exact_where_a_patch_equals_a_centre():
    # the ||x||^2 - 2 x.c + ||c||^2 form alone puts such a patch at sqrt(rounding), not 0
    g = torch.Generator().manual_seed(5)
    x = torch.rand(3, 4, 9, 9, generator=g) * 2 - 1
    centres = torch.randn(6, 4, 3, 3, generator=g) / 6
    centres.data[2] = x[1, :, 3:6, 4:7]  # patch (h=3, w=4) of image 1, stride 1, no padding
    centres.data[4] = x[2, :, 0:3, 0:3] * (1 + 1e-4)  # near, not equal
    xs, cs = x.clone().requires_grad_(), centres.clone().requires_grad_()
    d = l2_distance_conv2d(xs, cs)
    assert d[1, 2, 3, 4] == 0
    # everywhere else: the difference's norm, in float64 (unfold + explicit differences)
    patches = torch.nn.functional.unfold(x.double(), 3).transpose(1, 2)  # (B, L, Ckk)
    ref = (patches[:, :, None, :] - centres.double().flatten(1)[None, None]).norm(dim=-1)  # (B, L, O)
    ref = ref.transpose(1, 2).reshape(d.shape)
    torch.testing.assert_close(d.double(), ref, rtol=1e-5, atol=1e-6)
    assert abs(d[2, 4, 0, 0].item() - ref[2, 4, 0, 0].item()) < 1e-6
    # gradients: finite, 0 at the exact hit's pair, the difference's direction at the near pair
    weights = torch.zeros_like(d)
    weights[1, 2, 3, 4] = weights[2, 4, 0, 0] = 1
    (d * weights).sum().backward()
    assert torch.isfinite(xs.grad).all() and torch.isfinite(cs.grad).all()
    diff = centres[4] - x[2, :, 0:3, 0:3]
    torch.testing.assert_close(cs.grad[4], diff / diff.norm(), rtol=1e-3, atol=1e-4)
    assert cs.grad[2].abs().max() == 0


def test_conv_l2_equals_unfold_cdist():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 12, 12)
    c = torch.randn(16, 16, 3, 3) / 12
    for stride, padding in [(1, 1), (2, 1), (1, 0)]:
        fast = l2_distance_conv2d(x, c, stride, padding)
        slow = l2_distance_unfold_cdist(x, c, stride, padding)
        assert fast.shape == slow.shape
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)
    layer = L2DistanceConv2d(16, 8, 3, padding=1).double()
    y = layer(x.double())
    assert y.shape == (2, 8, 12, 12)
    torch.testing.assert_close(y.mean(1), torch.zeros(2, 12, 12, dtype=torch.float64), atol=1e-10, rtol=0)
    d = l2_distance_unfold_cdist(x.double(), layer.centres.detach(), 1, 1)
    torch.testing.assert_close(y, -(d - d.mean(1, keepdim=True)) / (d.std(1, keepdim=True) + 1e-5))


def test_generic_metric_conv_matches_per_patch_layer():
    torch.manual_seed(0)
    metric = LpDistance(2 * 9, 4, p=1.0).double()
    conv = MetricConv2d(metric, 2, 3, padding=1)
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    y = conv(x)
    patch = F.pad(x, (1, 1, 1, 1))[0, :, 1:4, 2:5].reshape(1, -1)  # patch centred at (h=1, w=2)
    torch.testing.assert_close(y[0, :, 1, 2], metric(patch)[0])
    d = lp_distance_conv2d(x, metric.centres.detach().view(4, 2, 3, 3), 1.0, padding=1)
    torch.testing.assert_close(d[0, :, 1, 2], metric.distances(patch)[0])


@pytest.mark.parametrize("stride,padding,bias", [(1, 1, True), (2, 1, True), (1, 0, False), (2, 0, True)])
def test_stereo_conv_path_equals_the_layer_on_every_unfolded_patch(stride, padding, bias):
    torch.manual_seed(1)
    layer = StereoAngle(3 * 9, 5, bias=bias).double()
    if bias:
        with torch.no_grad():
            layer.bias.normal_()
    conv = MetricConv2d(layer, 3, 3, stride=stride, padding=padding)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    y = conv(x)
    # reference: the vector layer applied to each unfolded patch, written out here
    patches = F.unfold(x, 3, padding=padding, stride=stride)  # (B, 27, L)
    ho, wo = (7 + 2 * padding - 3) // stride + 1, (6 + 2 * padding - 3) // stride + 1
    ref = layer(patches.transpose(1, 2).reshape(-1, 27)).view(2, ho * wo, 5).transpose(1, 2).reshape(2, 5, ho, wo)
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, layer.weight, layer.log_input_scale], g, retain_graph=True)
    want = torch.autograd.grad(ref, [x, layer.weight, layer.log_input_scale], g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_epsilon_softmax_formula_and_rejection():
    d = torch.tensor([[1.0, 2.0, 3.0], [5.0, 6.0, 7.0]], dtype=torch.float64)
    sim = EpsilonSoftmax(4.0, mode="fixed", log_scale=math.log(2.0)).double()
    a = sim(d)
    expected = torch.softmax(-2.0 * torch.cat([d, torch.full((2, 1), 4.0, dtype=torch.float64)], 1), 1)
    torch.testing.assert_close(a, expected)
    assert sim.rejects(d).tolist() == [False, True]
    assert (a.argmax(1) == 3).tolist() == sim.rejects(d).tolist()


def test_epsilon_running_mean_and_learned():
    sim = EpsilonSoftmax(mode="running").train()
    d1, d2 = torch.full((2, 3), 2.0), torch.full((2, 3), 4.0)
    sim(d1)
    assert float(sim.epsilon) == pytest.approx(2.0)
    sim(d2)
    assert float(sim.epsilon) == pytest.approx(0.9 * 2.0 + 0.1 * 4.0)
    sim.eval()
    sim(torch.full((2, 3), 100.0))
    assert float(sim.epsilon) == pytest.approx(2.2)  # frozen in eval
    learned = EpsilonSoftmax(1.5, mode="learned")
    learned(torch.rand(3, 4)).sum().backward()
    assert learned.log_epsilon.grad is not None


def test_min_exp_and_umap_similarity():
    torch.manual_seed(0)
    d = torch.rand(6, 20, dtype=torch.float64) * 5
    ref = torch.exp(-2 * (d - d.min(1, keepdim=True).values) / d.std(1, keepdim=True))
    torch.testing.assert_close(min_exp_similarity(d), ref, rtol=1e-6, atol=1e-7)
    a = umap_similarity(d, k=8)
    torch.testing.assert_close(a.sum(1), torch.full((6,), 3.0, dtype=torch.float64), rtol=1e-9, atol=1e-9)
    assert torch.allclose(a.max(1).values, torch.ones(6, dtype=torch.float64))


@pytest.mark.parametrize("bad", [torch.randn(3, 5), torch.randn(3, 4, 1), torch.full((2, 4), float("nan"))])
def test_bad_inputs_raise(bad):
    with pytest.raises(InvalidInputError):
        LpDistance(4, 3)(bad)


def test_bad_parameters_raise():
    for make in (lambda: LpDistance(4, 3, p=0), lambda: LpDistance(4, 3, p=-1),
                 lambda: LpDistance(4, 1), lambda: LpDistance(4, 3, variant="nope"),
                 lambda: EpsilonSoftmax(0.0, mode="fixed"), lambda: EpsilonSoftmax(-1.0, mode="fixed"),
                 lambda: EpsilonSoftmax(float("nan"), mode="fixed"), lambda: EpsilonSoftmax(mode="fixed"),
                 lambda: EpsilonSoftmax(1.0, mode="bogus")):
        with pytest.raises(InvalidInputError):
            make()
    with pytest.raises(InvalidInputError):
        EpsilonSoftmax(1.0, mode="fixed").set_epsilon(0.0)
    with pytest.raises(InvalidInputError):
        L2DistanceConv2d(3, 4, 3)(torch.randn(1, 2, 8, 8))


def _icnn_on_each_difference(layer, x, weights):
    """The notebook's network written out on every difference ``u = x_b - c_j``, ``(B, H)``, with
    the layer weights ``weights`` used as they are (no split, no abs)."""
    u = (x[:, None, :] - layer.centres[None]).reshape(-1, x.shape[1])
    z = F.leaky_relu(u @ weights[0].T + layer.layers[0].bias, 0.01)
    last = len(layer.layers) - 1
    for k in range(1, last + 1):
        skip = layer.skips[k - 1]
        z = z @ weights[k].T + layer.layers[k].bias + u @ skip.weight.T + skip.bias
        if k < last:
            z = F.leaky_relu(z, 0.01)
    return z.reshape(x.shape[0], -1)


@pytest.mark.parametrize("widths", [(6,), (6, 5), (4, 7, 3)])
def test_input_convex_distance_equals_the_network_on_every_difference_values_and_gradients(widths):
    from pellucid.nn import InputConvexDistance

    torch.manual_seed(0)
    layer = InputConvexDistance(3, 4, widths=widths).double()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, dtype=torch.float64)
    (layer(x) * w).sum().backward()
    ours = [x.grad.clone()] + [p.grad.clone() for p in layer.parameters()]
    value = layer(x).detach()
    layer.zero_grad()
    x.grad = None
    reference = -_icnn_on_each_difference(layer, x, [m.weight for m in layer.layers]) * layer.log_scale.exp()
    (reference * w).sum().backward()
    torch.testing.assert_close(value, reference.detach())
    for a, b in zip(ours, [x.grad] + [p.grad for p in layer.parameters()]):
        torch.testing.assert_close(a, b)
    assert len(ours) == 1 + len(list(layer.parameters()))


def test_input_convex_distance_is_convex_whatever_the_sign_of_its_stored_weights():
    from pellucid.nn import InputConvexDistance

    torch.manual_seed(1)
    layer = InputConvexDistance(3, 2, widths=(8, 6)).double()
    assert all(bool((m.weight >= 0).all()) for m in layer.layers)  # projected at construction
    assert any(bool((m.weight < 0).any()) for m in layer.skips)  # the skips keep their sign
    with torch.no_grad():
        for m in layer.layers:
            m.weight.normal_()  # e.g. a state dict written by hand: the forward still uses |W|
    a, b = torch.randn(300, 3, dtype=torch.float64), torch.randn(300, 3, dtype=torch.float64)
    for t in (0.5, 0.2):
        fa, fb, ft = layer.convex_value(a), layer.convex_value(b), layer.convex_value(t * a + (1 - t) * b)
        assert bool((ft <= t * fa + (1 - t) * fb + 1e-10).all())
    plain = _icnn_on_each_difference(layer, a, [m.weight.detach() for m in layer.layers]).detach()
    fa, fb = plain, _icnn_on_each_difference(layer, b, [m.weight.detach() for m in layer.layers]).detach()
    fm = _icnn_on_each_difference(layer, (a + b) / 2, [m.weight.detach() for m in layer.layers]).detach()
    assert bool((fm > (fa + fb) / 2 + 1e-9).any())  # the same network with signed weights is not convex
    layer.project_()
    assert all(bool((m.weight >= 0).all()) for m in layer.layers)


def test_input_convex_distance_trains_as_the_notebooks_in_place_abs_does():
    # the notebook replaces every layer's weight by its absolute value before each forward; pellucid
    # uses |W| in the forward and stores |W| after each step: the same weights, step after step
    from pellucid.nn import InputConvexDistance
    from pellucid.nn.semantic import project_constraints_

    torch.manual_seed(2)
    ours = InputConvexDistance(4, 3, widths=(5, 4)).double()
    notebook = InputConvexDistance(4, 3, widths=(5, 4)).double()
    notebook.load_state_dict(ours.state_dict())
    opt_ours = torch.optim.Adam(ours.parameters(), lr=0.3)  # large steps, so weights cross zero
    opt_notebook = torch.optim.Adam(notebook.parameters(), lr=0.3)
    crossed = 0
    for step in range(6):
        x, w = torch.randn(7, 4, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64)
        opt_ours.zero_grad()
        (ours(x) * w).sum().backward()
        opt_ours.step()
        crossed += sum(int((m.weight < 0).sum()) for m in ours.layers)
        project_constraints_(ours)
        opt_notebook.zero_grad()
        with torch.no_grad():
            for m in notebook.layers:
                m.weight.abs_()
        y = -_icnn_on_each_difference(notebook, x, [m.weight for m in notebook.layers]) * notebook.log_scale.exp()
        (y * w).sum().backward()
        opt_notebook.step()
    with torch.no_grad():
        for m in notebook.layers:
            m.weight.abs_()
    assert crossed > 0
    for (name, a), b in zip(ours.state_dict().items(), notebook.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_input_convex_distance_rejects_bad_arguments_and_inputs():
    from pellucid.nn import InputConvexDistance

    for kwargs in ({"widths": ()}, {"widths": (0,)}, {"widths": (3, -1)}, {"widths": (True,)}, {"widths": (2.5,)},
                   {"negative_slope": 1.0}, {"negative_slope": -0.1}, {"negative_slope": float("nan")},
                   {"negative_slope": "0.01"}):
        with pytest.raises(InvalidInputError):
            InputConvexDistance(4, 3, **kwargs)
    for shape in ((0, 3), (4, 0), (4.0, 3), (4, True)):
        with pytest.raises(InvalidInputError):
            InputConvexDistance(*shape)
    layer = InputConvexDistance(4, 3, widths=(5,))
    for bad in (torch.randn(2, 5), torch.randn(2, 4, 1), torch.full((2, 4), float("inf")),
                torch.zeros(2, 4, dtype=torch.long)):
        with pytest.raises(InvalidInputError):
            layer(bad)
