"""Captum baselines behind pellucid's call shape, each against a slower reference written here.

References share no code with ``pellucid.explain``: autograd on the model's own layers, float64,
quadrature nodes from NumPy, noise drawn the way Captum draws it from an explicitly seeded
generator, hand-written Rescale / guided-ReLU backward rules and a hand Grad-CAM.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pellucid.errors import InputTypeError, InvalidInputError, UnknownNameError
from pellucid.explain import EXPLAINERS, create_explainer, counterfactual
from pellucid.explain.baselines import (DeepLift, GradCam, GradientShap, GuidedBackprop, GuidedGradCam,
                                        HookCoverageWarning, InputXGradient, IntegratedGradients,
                                        SmoothGrad)
from pellucid.explain.targets import DirectionTarget, UnitTarget

METHODS = ["input-x-gradient", "integrated-gradients", "smoothgrad", "gradient-shap", "deeplift",
           "guided-backprop", "grad-cam", "guided-grad-cam"]
DETERMINISTIC = [m for m in METHODS if m not in ("smoothgrad", "gradient-shap")]
N_OUT = 4


class TinyCNN(nn.Module):
    def __init__(self, batchnorm: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4) if batchnorm else nn.Identity()
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(5 * 3 * 3, N_OUT)

    def forward(self, x):  # (B, 2, 6, 6) -> (B, 4, 3, 3) -> (B, 5, 3, 3) -> (B, N_OUT)
        h = self.pool(self.relu1(self.bn(self.conv1(x))))
        return self.fc(self.drop(self.relu2(self.conv2(h))).flatten(1))


def tiny_cnn(seed: int = 0) -> TinyCNN:
    torch.manual_seed(seed)
    return TinyCNN().double().eval()


def tiny_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                         nn.Linear(8, N_OUT)).double().eval()


def images(seed: int = 1, batch: int = 3) -> torch.Tensor:
    return torch.rand(batch, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------- references

def score_fn(model, x, target):
    """``out -> (B,)`` for a target given as None, an int, a list or a callable (reference side)."""
    if callable(target):
        return target
    with torch.no_grad():
        index = model(x).argmax(1) if target is None else torch.as_tensor(target).long().expand(len(x))
    return lambda out: out.gather(1, index.view(-1, 1)).squeeze(1)


def grad_at(model, x, score):
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(score(model(x)).sum(), x)
    return g


def ref_integrated_gradients(model, x, baseline, score, alphas, weights):
    weights = weights.astype(np.float32).astype(np.float64)  # Captum keeps step sizes in float32
    total = sum(w * grad_at(model, baseline + a * (x - baseline), score) for a, w in zip(alphas, weights))
    return (x - baseline) * total


def gauss_legendre(n):
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return (nodes + 1) / 2, weights / 2  # [-1, 1] -> [0, 1]


def midpoint(n):
    return (np.arange(n) + 0.5) / n, np.full(n, 1 / n)


def captum_noise(x, n, std, seed):
    """Gaussian noise as Captum's NoiseTunnel draws it: float32, all copies of sample 0 first."""
    torch.manual_seed(seed)
    noise = torch.normal(0, torch.tensor(std).repeat((len(x) * n,) + x.shape[1:]))
    return noise.view(len(x), n, *x.shape[1:])  # (B, n, ...)


def ref_smoothgrad(model, x, score, n, std, seed):
    noise = captum_noise(x, n, std, seed)
    return sum(grad_at(model, x + noise[:, j], score) for j in range(n)) / n


def ref_gradient_shap(model, x, refs, score, n, seed):
    """Expected gradients with Captum's NumPy draws: baseline indices, then one scale per row."""
    np.random.seed(seed)
    pick = np.random.choice(len(refs), n * len(x)).reshape(len(x), n)
    scale = torch.tensor(np.random.uniform(0.0, 1.0, n * len(x))).view(len(x), n, 1, 1, 1)
    total = 0
    for j in range(n):
        b = refs[torch.as_tensor(pick[:, j])]
        total = total + (x - b) * grad_at(model, b + scale[:, j] * (x - b), score)
    return total / n


def ref_deeplift_mlp(mlp, x, baseline, target):
    """Rescale rule by hand: secant multipliers (relu(z) - relu(z')) / (z - z') at both ReLUs."""
    l1, _, l2, _, l3 = mlp
    with torch.no_grad():
        z1, z1b = l1(x), l1(baseline)
        z2, z2b = l2(z1.relu()), l2(z1b.relu())
        m1 = (z1.relu() - z1b.relu()) / (z1 - z1b)
        m2 = (z2.relu() - z2b.relu()) / (z2 - z2b)
        g = l3.weight[target] * m2  # (B, 8)
        g = (g @ l2.weight) * m1
        return (x - baseline) * (g @ l1.weight)


class GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return z.clamp_min(0)

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        return (g * (z > 0)).clamp_min(0)  # only positive gradients pass a ReLU


def cnn_forward(model, x, relu=F.relu):
    h = F.max_pool2d(relu(model.conv1(x)), 2)
    return model.fc(relu(model.conv2(h)).flatten(1))


def ref_guided_backprop(model, x, score):
    return grad_at(lambda v: cnn_forward(model, v, GuidedReLU.apply), x, score)


def ref_grad_cam(model, x, score, layer="conv2"):
    """``sum_k mean_ij(d s / d A^k_ij) A^k`` at the layer, bilinearly upsampled, broadcast over C."""
    a1 = model.conv1(x)
    if layer == "conv1":
        a1 = a1.detach().requires_grad_(True)
        activation = a1
    a2 = model.conv2(F.max_pool2d(F.relu(a1), 2))
    if layer == "conv2":
        a2 = a2.detach().requires_grad_(True)
        activation = a2
    out = model.fc(F.relu(a2).flatten(1))
    (g,) = torch.autograd.grad(score(out).sum(), activation)
    cam = (g.mean((2, 3), keepdim=True) * activation).sum(1, keepdim=True).detach()
    return F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False), cam


TARGETS = [None, 2, [3, 0, 1], lambda out: out[:, 1] - 0.5 * out[:, 3]]
TARGET_IDS = ["top", "int", "per-sample", "callable"]


def close(got, want, tol=1e-10):
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


# ------------------------------------------------------------------------------- each method

@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_input_x_gradient_is_x_times_gradient(target):
    model, x = tiny_cnn(), images()
    close(InputXGradient(model).attribute(x, target), x * grad_at(model, x, score_fn(model, x, target)))


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_integrated_gradients_gauss_legendre_and_midpoint(target):
    model, x = tiny_cnn(), images()
    baseline = torch.full((2, 6, 6), 0.25, dtype=torch.float64)
    score = score_fn(model, x, target)
    got = IntegratedGradients(model, baseline=baseline, n_steps=8).attribute(x, target)
    close(got, ref_integrated_gradients(model, x, baseline, score, *gauss_legendre(8)))
    got = IntegratedGradients(model, n_steps=7, method="riemann_middle").attribute(x, target)
    want = ref_integrated_gradients(model, x, torch.zeros_like(x), score, *midpoint(7))
    close(got, want, tol=1e-6)  # Captum's Riemann nodes are float32


def test_integrated_gradients_completeness():
    model, x = tiny_cnn(), images()
    baseline = 0.5
    attr = IntegratedGradients(model, baseline=baseline, n_steps=256).attribute(x, target=1)
    with torch.no_grad():
        delta = model(x)[:, 1] - model(torch.full_like(x, baseline))[:, 1]
    torch.testing.assert_close(attr.flatten(1).sum(1), delta, rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_smoothgrad_is_mean_gradient_at_seeded_noisy_copies(target):
    model, x = tiny_cnn(), images()
    got = SmoothGrad(model, nt_samples=5, stdevs=0.2, seed=7).attribute(x, target)
    close(got, ref_smoothgrad(model, x, score_fn(model, x, target), 5, 0.2, seed=7))


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_gradient_shap_is_expected_gradients_with_seeded_draws(target):
    model, x = tiny_cnn(), images()
    refs = torch.rand(4, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    got = GradientShap(model, baselines=refs, n_samples=6, seed=3).attribute(x, target)
    close(got, ref_gradient_shap(model, x, refs, score_fn(model, x, target), 6, seed=3))


def test_deeplift_is_the_rescale_rule_and_sums_to_delta():
    mlp = tiny_mlp()
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    baseline = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    target = [0, 3, 1, 2, 2]
    got = DeepLift(mlp, baseline=baseline).attribute(x, target)
    want = ref_deeplift_mlp(mlp, x, baseline.expand_as(x), torch.tensor(target))
    close(got, want)
    with torch.no_grad():
        delta = (mlp(x) - mlp(baseline.expand_as(x))).gather(1, torch.tensor(target).view(-1, 1))
    close(got.sum(1), delta.squeeze(1))
    model, x = tiny_cnn(), images()  # max pools by Captum's rule: summation to delta still holds
    attr = DeepLift(model).attribute(x, target=2)
    with torch.no_grad():
        delta = model(x)[:, 2] - model(torch.zeros_like(x))[:, 2]
    close(attr.flatten(1).sum(1), delta, tol=1e-8)


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_guided_backprop_clamps_negative_gradients_at_relus(target):
    model, x = tiny_cnn(), images()
    got = GuidedBackprop(model).attribute(x, target)
    close(got, ref_guided_backprop(model, x, score_fn(model, x, target)))


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_grad_cam_by_hand_on_the_last_conv(target):
    model, x = tiny_cnn(), images()
    score = score_fn(model, x, target)
    want, cam = ref_grad_cam(model, x, score)
    got = GradCam(model).attribute(x, target)  # default layer: the last Conv2d, conv2
    assert got.shape == x.shape
    close(got, want.expand_as(x))
    assert bool((cam < 0).any())  # signed by default
    close(GradCam(model, relu=True, interpolate_mode="nearest").attribute(x, target),
          F.interpolate(cam.clamp_min(0), size=(6, 6), mode="nearest").expand_as(x))
    want1, _ = ref_grad_cam(model, x, score, layer="conv1")
    close(GradCam(model, layer="conv1").attribute(x, target), want1.expand_as(x))


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_guided_grad_cam_is_guided_backprop_times_relu_cam(target):
    model, x = tiny_cnn(), images()
    score = score_fn(model, x, target)
    _, cam = ref_grad_cam(model, x, score)
    up = F.interpolate(cam.clamp_min(0), size=(6, 6), mode="bilinear", align_corners=False)
    close(GuidedGradCam(model).attribute(x, target), ref_guided_backprop(model, x, score) * up)


# ------------------------------------------------------------------------------- every method

def test_every_method_is_registered_and_built_by_name():
    model = tiny_cnn()
    for name in METHODS:
        explainer = create_explainer(name, model, temperature=0.3, gate="sigmoid")  # ignored
        assert explainer.name == name and EXPLAINERS.get(name) is type(explainer)
        assert type(explainer).__doc__.count("arXiv") >= 1  # formula and source paper documented


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_targets_of_every_kind_match_per_sample_calls(name):
    model, x = tiny_cnn(), images()
    explainer = create_explainer(name, model)
    weights = torch.randn(3, N_OUT, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    top = model(x).argmax(1).tolist()
    batched = {"none": explainer.attribute(x), "list": explainer.attribute(x, [3, 0, 1]),
               "fn": explainer.attribute(x, lambda out: (out * weights).sum(1))}  # per-sample weights
    for b, t in enumerate([3, 0, 1]):
        xb = x[b:b + 1]
        close(batched["none"][b:b + 1], explainer.attribute(xb, top[b]))
        close(batched["list"][b:b + 1], explainer.attribute(xb, t))
        close(batched["fn"][b:b + 1], explainer.attribute(xb, lambda out: (out * weights[b]).sum(1)))


@pytest.mark.parametrize("name", METHODS)
def test_hidden_layer_targets(name):
    model, x = tiny_cnn(), images()
    explainer = _small(name, model, layer="conv1")
    unit = UnitTarget("conv2:1@1,2")
    direction = torch.randn(3, 5, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    got = explainer.attribute(x, unit)
    per_sample = explainer.attribute(x, DirectionTarget("conv2", direction))
    if name == "input-x-gradient":
        features = lambda v: model.conv2(F.max_pool2d(F.relu(model.conv1(v)), 2))  # noqa: E731
        close(got, x * grad_at(features, x, lambda f: f[:, 1, 1, 2]))
    if name in DETERMINISTIC:
        for b in range(3):
            single = explainer.attribute(x[b:b + 1], DirectionTarget("conv2", direction[b]))
            close(per_sample[b:b + 1], single)
    assert got.shape == per_sample.shape == x.shape


@pytest.mark.parametrize("name", ["smoothgrad", "gradient-shap"])
def test_seeded_calls_are_reproducible_and_leave_global_rngs_untouched(name):
    model, x = tiny_cnn(), images()
    torch.manual_seed(123)
    np.random.seed(123)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    explainer = create_explainer(name, model, seed=11)
    first, second = explainer.attribute(x, 1), explainer.attribute(x, 1)
    assert torch.equal(first, second)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])
    other = create_explainer(name, model, seed=12).attribute(x, 1)
    assert not torch.equal(first, other)
    create_explainer(name, model, seed=None).attribute(x, 1)  # unseeded: draws from the global RNGs
    assert not torch.equal(torch.get_rng_state(), torch_state)


@pytest.mark.parametrize("name", METHODS)
def test_inputs_model_state_and_hooks_are_left_as_they_were(name):
    torch.manual_seed(0)
    model = TinyCNN(batchnorm=True).double().train()
    model.relu2.training = False  # a mixed train/eval tree is restored flag by flag
    x = images()
    x_before, state = x.clone(), {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: m.training for n, m in model.named_modules()}
    attrs = {n: set(vars(m)) for n, m in model.named_modules()}
    with pytest.warns(UserWarning, match="training mode"):
        _small(name, model).attribute(x, 2)
    assert torch.equal(x, x_before) and not x.requires_grad and x.grad is None
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert {n: set(vars(m)) for n, m in model.named_modules()} == attrs
    for m in model.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)
    assert all(p.grad is None for p in model.parameters())


def _small(name, model, layer=None):
    options = {"smoothgrad": {"nt_samples": 2}, "gradient-shap": {"n_samples": 2},
               "integrated-gradients": {"n_steps": 4}, "grad-cam": {"layer": layer},
               "guided-grad-cam": {"layer": layer}}.get(name, {})
    return create_explainer(name, model, **options)


@pytest.mark.parametrize("name", ["deeplift", "guided-backprop", "grad-cam", "integrated-gradients"])
def test_hooks_and_attributes_are_removed_when_a_call_fails(name):
    model, x = tiny_cnn(), images()
    attrs = {n: set(vars(m)) for n, m in model.named_modules()}

    def failing(out):
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        create_explainer(name, model).attribute(x, failing)
    assert {n: set(vars(m)) for n, m in model.named_modules()} == attrs
    for m in model.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)


# ------------------------------------------------------------------------------- hook coverage

class FunctionalReLUs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.act = nn.Linear(6, 8), nn.Linear(8, N_OUT), nn.GELU()

    def forward(self, x):
        return self.b(self.act(F.relu(self.a(x))).relu())


class ReusedReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.relu = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, N_OUT), nn.ReLU()

    def forward(self, x):
        return self.c(self.relu(self.b(self.relu(self.a(x)))))


@pytest.mark.parametrize("cls,names", [(DeepLift, ["1 F.relu", "1 Tensor.relu", "1 nn.GELU"]),
                                       (GuidedBackprop, ["1 F.relu", "1 Tensor.relu"])])
def test_functional_relus_are_named_in_a_warning(cls, names):
    torch.manual_seed(0)
    with pytest.warns(HookCoverageWarning, match="plain gradient") as caught:
        explainer = cls(FunctionalReLUs().double().eval())
    assert caught[0].filename == __file__  # points at the caller
    assert explainer.unreached == names
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning on every call
        explainer.attribute(torch.rand(2, 6, dtype=torch.float64), 0)
        GuidedBackprop(tiny_cnn())  # nn.ReLU modules only: silent


def test_deeplift_rejects_a_reused_relu_module_and_guided_backprop_handles_it():
    torch.manual_seed(0)
    model, x = ReusedReLU().double().eval(), torch.rand(3, 6, dtype=torch.float64)
    with pytest.raises(InvalidInputError, match="relu are called more than once"):
        DeepLift(model)
    want = grad_at(lambda v: model.c(GuidedReLU.apply(model.b(GuidedReLU.apply(model.a(v))))), x,
                   lambda out: out[:, 1])
    close(GuidedBackprop(model).attribute(x, 1), want)


def test_inplace_relus_give_the_same_attributions():
    mlp = tiny_mlp()
    inplace = nn.Sequential(*[nn.ReLU(inplace=True) if isinstance(m, nn.ReLU) else m for m in mlp])
    x = torch.rand(3, 6, dtype=torch.float64)
    for cls in (DeepLift, GuidedBackprop):
        close(cls(inplace).attribute(x, 2), cls(mlp).attribute(x, 2))


# ------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("make,match", [
    (lambda m: GradCam(m, layer="conv9"), "has no module 'conv9'.*conv1"),
    (lambda m: GuidedGradCam(m, layer="fc.weight"), "has no module"),
    (lambda m: GradCam(tiny_mlp()), "no nn.Conv2d"),
    (lambda m: GradCam(m, layer=nn.Conv2d(1, 1, 1)), "not a module of"),
    (lambda m: IntegratedGradients(m, n_steps=0), "n_steps must be a positive integer"),
    (lambda m: IntegratedGradients(m, method="simpson"), "method must be one of"),
    (lambda m: IntegratedGradients(m, method="riemann_trapezoid"), "sum to .n_steps - 1. / n_steps"),
    (lambda m: IntegratedGradients(m, method="riemann_left", n_steps=1), "at least 2"),
    (lambda m: SmoothGrad(m, stdevs=float("nan")), "stdevs"),
    (lambda m: SmoothGrad(m, seed=-1), "seed"),
    (lambda m: InputXGradient(m, n_step=3), "has no option 'n_step'"),
])
def test_bad_options_are_one_line_errors(make, match):
    with pytest.raises(InvalidInputError, match=match) as info:
        make(tiny_cnn())
    assert "\n" not in str(info.value)


def test_unknown_method_name_is_a_one_line_error():
    with pytest.raises(UnknownNameError, match="unknown explainer 'integrated_gradient'.*smoothgrad") as info:
        create_explainer("integrated_gradient", tiny_cnn())
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("bad,match,error", [
    (torch.full((3, 2, 6, 6), float("nan"), dtype=torch.float64), "NaN", InvalidInputError),
    (torch.zeros(0, 2, 6, 6, dtype=torch.float64), "empty", InvalidInputError),
    (torch.rand(3, 2, 6, 6), "dtype torch.float32", InputTypeError),
    (torch.zeros(3, 2, 6, 6, dtype=torch.long), "floating point", InputTypeError),
], ids=["nan", "empty", "float32-for-float64-model", "long"])
def test_bad_inputs_are_one_line_errors(name, bad, match, error):
    with pytest.raises(error, match=match) as info:
        create_explainer(name, tiny_cnn()).attribute(bad, 0)
    assert isinstance(info.value, InvalidInputError) and "\n" not in str(info.value)


@pytest.mark.parametrize("make,target,match", [
    (lambda m: IntegratedGradients(m, baseline=torch.zeros(5, 5)), 0, "baseline has shape"),
    (lambda m: DeepLift(m, baseline=torch.full((2, 6, 6), float("inf"))), 0, "NaN or inf"),
    (lambda m: GradientShap(m, baselines=torch.zeros(3, 1, 6, 6)), 0, "baselines has shape"),
    (lambda m: GradCam(m, interpolate_mode="trilinear"), 0, "interpolate_mode"),
    (lambda m: GradCam(m, layer="fc"), 0, "spatial axes"),
    (lambda m: SmoothGrad(m, nt_samples=2), N_OUT, "out of range"),
    (lambda m: DeepLift(m), [0, 1], "2 targets for a batch of 3"),
    (lambda m: GuidedBackprop(m), lambda out: out, "one scalar per sample"),
])
def test_bad_baselines_layers_and_targets_are_one_line_errors(make, target, match):
    with pytest.raises(InvalidInputError, match=match) as info:
        make(tiny_cnn()).attribute(images(), target)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["input-x-gradient", "smoothgrad", "guided-backprop"])
def test_counterfactual_ascends_along_the_attribution(name):
    model, x = tiny_cnn(), images()
    explainer = _small(name, model)
    result = counterfactual(explainer, x, target=[1, 2, 3], steps=1, alpha=0.1, pixel_range=None)
    attr = explainer.attribute(x, [1, 2, 3])
    close(result.difference, 0.1 * attr / attr.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
    with torch.no_grad():
        close(result.scores[0], model(x)[[0, 1, 2], [1, 2, 3]])


def test_float32_model_and_repr():
    torch.manual_seed(0)
    model, x = TinyCNN().eval(), torch.rand(2, 2, 6, 6)
    for name in METHODS:
        attr = _small(name, model).attribute(x)
        assert attr.dtype == torch.float32 and attr.shape == x.shape and bool(torch.isfinite(attr).all())
    assert repr(GradCam(model)) == "GradCam(TinyCNN)"


def test_value_range_keeps_noisy_copies_in_the_models_domain():
    """A model that refuses inputs outside [0, 1]: SmoothGrad's noisy copies are clipped to the
    domain, the gradient passes through the clip (a linear model's SmoothGrad is its weight)."""
    from pellucid.explain import create_explainer

    class Strict(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(16, 2)

        def forward(self, x):
            if float(x.detach().min()) < 0 or float(x.detach().max()) > 1:  # a value check, not a graph
                raise InvalidInputError("inputs outside [0, 1]")
            return self.linear(x.flatten(1))

    torch.manual_seed(0)
    model = Strict().double().eval()
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    with pytest.raises(InvalidInputError, match="outside"):
        create_explainer("smoothgrad", model, stdevs=0.5).attribute(x, target=1)
    attr = create_explainer("smoothgrad", model, stdevs=0.5, value_range=(0, 1)).attribute(x, target=1)
    want = model.linear.weight[1].view(1, 1, 4, 4).expand_as(x)
    assert torch.allclose(attr, want, atol=1e-12)
    for bad in ((1, 0), (0, float("inf")), "ab"):
        with pytest.raises(InvalidInputError, match="value_range"):
            create_explainer("smoothgrad", model, value_range=bad)
