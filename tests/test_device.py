"""``--device`` and device- and dtype-agnostic computation.

Every test that computes runs on each device present (the CPU always; CUDA and MPS when the host
has them, skipped otherwise with the reason), and the cheap mechanisms also in float64, where an
attack or explainer that builds a tensor without the input's dtype would fail or fall back to
float32.
"""

from __future__ import annotations

import contextlib
import copy
import inspect

import pytest
import torch

from pellucid._device import device_name, resolve_device
from pellucid.cli.main import main
from pellucid.errors import InvalidInputError


def _present() -> list:
    out = [pytest.param("cpu", id="cpu")]
    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    out.append(pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not cuda, reason="no CUDA device")))
    out.append(pytest.param("mps", id="mps", marks=pytest.mark.skipif(not mps, reason="no MPS device")))
    return out


DEVICES = _present()


# --- resolve_device ---------------------------------------------------------------------------

def _no_accelerator(monkeypatch, cuda: bool = False, mps: bool = False, count: int = 1) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count if cuda else 0)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    _no_accelerator(monkeypatch)
    assert resolve_device("auto") == torch.device("cpu")
    _no_accelerator(monkeypatch, mps=True)
    assert resolve_device("auto") == torch.device("mps")
    _no_accelerator(monkeypatch, cuda=True, mps=True)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device() == torch.device("cuda", 0)  # auto is the default


def test_named_devices_resolve_and_missing_ones_are_one_line_errors(monkeypatch):
    _no_accelerator(monkeypatch, cuda=True, count=2)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("CUDA") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(InvalidInputError, match=r"cuda:2: there are 2 CUDA devices \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")
    with pytest.raises(InvalidInputError, match="MPS backend is not available"):
        resolve_device("mps")
    _no_accelerator(monkeypatch)
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(InvalidInputError, match="CUDA is not available"):
            resolve_device(spec)
    for spec in ("tpu", "cuda:x", "gpu", ""):
        with pytest.raises(InvalidInputError, match="unknown device") as e:
            resolve_device(spec)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("device", DEVICES)
def test_draws_happen_on_the_generators_device_whatever_the_default(device):
    from pellucid._device import draw_device

    assert draw_device(None) == torch.device("cpu")  # the global CPU generator
    gen = torch.Generator(device=device)
    assert draw_device(gen) == gen.device
    with torch.device("meta"):  # a caller's default device moves nothing
        assert draw_device(None) == torch.device("cpu") and draw_device(gen) == gen.device
        gen.manual_seed(0)
        first = torch.rand(3, generator=gen, device=draw_device(gen), dtype=torch.float32)
    gen.manual_seed(0)
    assert torch.equal(first, torch.rand(3, generator=gen, device=gen.device))


def test_device_name_is_what_records_show():
    assert device_name(torch.device("cpu")) == "cpu"
    assert device_name(torch.device("cuda", 1)) == "cuda:1"
    assert device_name("mps") == "mps"


# --- the CLI ------------------------------------------------------------------------------------

def _commands(authors_dir, tmp_path) -> dict[str, list[str]]:
    """A valid invocation of every command that computes (cheap settings)."""
    return {
        "train": ["train", "whitebox-mnist35", "--out", str(tmp_path / "train"), "--epochs", "1"],
        "evaluate": ["evaluate", str(authors_dir), "--limit", "4", "--steps", "1", "--no-checks"],
        "demo": ["demo", "--out", str(tmp_path / "demo"), "--epochs", "1", "--limit", "4"],
        "explain": ["explain", "--model", str(authors_dir), "--image", "skimage:camera", "--steps", "0"],
        "explain-bench": ["explain-bench", "--model", str(authors_dir), "--n", "2",
                          "--methods", "gradient", "--metrics", "deletion"],
        "inspect": ["inspect", str(authors_dir), "--list"],
    }


@pytest.mark.parametrize("command", ["train", "evaluate", "demo", "explain", "explain-bench", "inspect"])
def test_every_computing_command_refuses_an_unknown_device_in_one_line(command, authors_dir, tmp_path,
                                                                       capsys):
    argv = _commands(authors_dir, tmp_path)[command] + ["--device", "tpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown device 'tpu'" in err and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("command", ["train", "evaluate", "demo", "explain", "explain-bench", "inspect"])
def test_every_computing_command_refuses_cuda_without_cuda_before_any_work(command, authors_dir,
                                                                           tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    records = authors_dir / "evaluations"
    before = sorted(records.glob("*.json")) if records.exists() else []
    assert main(_commands(authors_dir, tmp_path)[command] + ["--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("CUDA is not available (no GPU, or a torch build without CUDA); use --device "
                        "cpu (or auto)") and len(err.splitlines()) == 1
    assert not (tmp_path / "train").exists() and not (tmp_path / "demo").exists()  # nothing trained
    assert (sorted(records.glob("*.json")) if records.exists() else []) == before  # nor recorded


@pytest.mark.parametrize("device", DEVICES)
def test_evaluate_records_the_device_without_changing_the_cpu_identity(device, authors_dir, capsys):
    import json

    from pellucid.report.records import record_identity, record_name

    assert main(["evaluate", str(authors_dir), "--limit", "6", "--steps", "2", "--no-checks",
                 "--device", device, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["device"].split(":")[0] == device and summary["processes"] == 1
    record = json.loads(open(summary["record"]).read())
    assert len(record["per_image"]["robust"]) == 6
    identity = record_identity(summary)
    # a CPU record is named as before devices were recorded; another device is a record of its own
    assert ("device" in identity) == (device != "cpu")
    cpu_summary = {k: v for k, v in summary.items() if k not in ("device", "processes")}
    assert (record_name(summary) == record_name(cpu_summary)) == (device == "cpu")


# --- attacks, evaluation and explainers on every device and in float64 ---------------------------

@pytest.fixture(scope="module")
def few(mnist35_test):
    return mnist35_test.images[:12], mnist35_test.labels[:12]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("attack, options", [("pgd", {"steps": 3}), ("fgsm", {}),
                                             ("square-native", {"queries": 20}),
                                             ("apgd-ce", {"steps": 3}), ("deepfool", {"steps": 3})])
def test_attacks_run_on_the_device_and_agree_with_the_cpu(device, attack, options, authors_model, few):
    from pellucid.robust import evaluate_robustness

    x, y = few
    reference = evaluate_robustness(authors_model, x, y, attack=attack, eps=0.4, seed=1, **options)
    model = authors_model.to(device)
    try:
        res = evaluate_robustness(model, x.to(device), y.to(device), attack=attack, eps=0.4, seed=1,
                                  **options)
    finally:
        authors_model.cpu()
    assert res.adversarial.device.type == device and res.robust.device.type == device
    assert bool(res.within_budget.all()) or attack == "deepfool"
    # the random draws come from the CPU's generator on every device: the same starts and
    # proposals, so the results differ by float rounding at most (an image or two)
    assert abs(res.robust_accuracy - reference.robust_accuracy) <= 2 / len(y) + 1e-9
    assert res.clean_accuracy == reference.clean_accuracy


# PGD's random start draws in the images' dtype (other numbers in float64): compared from x
@pytest.mark.parametrize("attack, options", [("pgd", {"steps": 3, "random_start": False}),
                                             ("square-native", {"queries": 20}), ("fgsm", {}),
                                             ("apgd-ce", {"steps": 3})])
def test_attacks_keep_float64(attack, options, authors_model, few):
    """An attack on a float64 model returns float64 inputs inside the budget, and breaks the same
    images as in float32 give or take the rounding of a few margins."""
    import copy

    from pellucid.robust import evaluate_robustness

    x, y = few
    model64 = copy.deepcopy(authors_model).double()
    r64 = evaluate_robustness(model64, x.double(), y, attack=attack, eps=0.4, seed=2, **options)
    r32 = evaluate_robustness(authors_model, x, y, attack=attack, eps=0.4, seed=2, **options)
    assert r64.adversarial.dtype == torch.float64 and r64.adversarial_logits.dtype == torch.float64
    assert bool(r64.within_budget.all())
    assert (r64.robust != r32.robust).sum() <= 2


def test_native_apgd_keeps_float64_and_the_device(authors_model, few):
    import copy

    from pellucid.robust.adaptive import surrogate_objective
    from pellucid.robust.apgd import apgd_objective

    x, y = few
    model64 = copy.deepcopy(authors_model).double()
    points, margins = apgd_objective(surrogate_objective(model64, "margin", 0.1), x.double(), y,
                                     eps=0.3, steps=4, restarts=2, generator=torch.Generator().manual_seed(0))
    assert points.dtype == torch.float64 and margins.dtype == torch.float64
    assert float((points - x.double()).abs().max()) <= 0.3 + 1e-12


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("method", ["pullback", "gradient", "integrated-gradients", "input-x-gradient"])
def test_explainers_follow_the_input_device_and_dtype(device, dtype, method, authors_model, few):
    import copy

    from pellucid.explain import create_explainer

    if device == "mps" and dtype == torch.float64:
        pytest.skip("MPS has no float64")
    x, y = few
    model = copy.deepcopy(authors_model).to(device, dtype)
    explainer = create_explainer(method, model)
    a = explainer.attribute(x[:4].to(device, dtype), target=y[:4].to(device))
    assert a.device.type == device and a.dtype == dtype and a.shape == x[:4].shape
    assert bool(torch.isfinite(a).all()) and float(a.abs().sum()) > 0
    reference = create_explainer(method, authors_model).attribute(x[:4], target=y[:4])
    # the same explanation as on the CPU in float32, to that precision
    assert torch.allclose(a.double().cpu(), reference.double(), rtol=1e-3,
                          atol=1e-5 * float(reference.abs().max()))


@pytest.mark.parametrize("device", DEVICES)
def test_whitebox_layers_give_float64_outputs_that_match_float32(device, authors_model, few):
    import copy

    x, _ = few
    model64 = copy.deepcopy(authors_model).to(device, torch.float64)
    with torch.no_grad():
        out64 = model64(x.to(device, torch.float64))
        out32 = authors_model(x)
    assert out64.dtype == torch.float64 and out64.device.type == device
    assert torch.allclose(out64.cpu().float(), out32, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("factored", [False, True], ids=["direct", "factored"])
def test_invex_distance_trains_on_each_device_with_the_cpu_float64_numbers(device, factored):
    """The Table 1 invex layer (both execution paths) computes on the input's device: after the
    ActNorms' data initialisation and an Adam step there, values and gradients equal the same steps
    run on the CPU in float64 (the only differences are rounding)."""
    from pellucid.nn import InvexDistance

    def run(dev, dtype):
        torch.manual_seed(0)
        layer = InvexDistance(16, 6, hidden=12, factored_output=factored).to(dev, dtype)
        x = torch.randn(5, 16, generator=torch.Generator().manual_seed(1)).to(dev, dtype)
        opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
        layer(x).sum().backward()  # initialises both ActNorms from the data
        opt.step()
        opt.zero_grad()
        x.requires_grad_(True)
        y = layer(x)
        y.square().sum().backward()
        assert y.device.type == dev.type and x.grad.device.type == dev.type
        return y.detach().cpu().double(), x.grad.cpu().double(), layer.centres.grad.cpu().double()

    ref = run(torch.device("cpu"), torch.float64)
    for got, want in zip(run(torch.device(device), torch.float32), ref):
        torch.testing.assert_close(got, want, rtol=2e-4, atol=2e-5)


# --- nothing is built on the default device ------------------------------------------------------
# A tensor made without naming a device lands on the default device: the CPU, unless the caller
# set another (``torch.set_default_device("cuda")``). On a CPU-only host such a tensor is
# invisible, yet on a GPU it meets the model's tensors on another device, and under a caller's
# default device it breaks draws from CPU generators. With the default device set to "meta"
# (tensors without data) every such tensor fails loudly: mixed with a CPU tensor, read, or handed
# to the C loops. The same call must then give exactly what it gives without the default device.

# The same holds for the dtype: with float64 as the default dtype, a tensor made without the
# input's dtype promotes float32 work to float64, and the result is no longer the same bits.


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


DEFAULTS = {"meta-device": lambda: torch.device("meta"), "float64-dtype": lambda: _default_dtype(torch.float64)}

SMALL_OPTIONS = {"steps": 2, "restarts": 1, "queries": 20, "budget": "native"}
# ImageNet-sized networks are torchvision's code, not pellucid's, and slow to run here
LARGE_MODELS = {"resnet50", "vgg11_bn", "densenet121", "resnext50_32x4d", "inception_v3", "googlenet",
                "fid-inception"}


def _models() -> list[str]:
    from pellucid.models.registry import MODELS

    return [name for name in MODELS if name not in LARGE_MODELS]


@pytest.mark.parametrize("name", _models())
@pytest.mark.parametrize("default", DEFAULTS)
def test_models_build_nothing_on_the_default_device(default, name):
    from pellucid.models.registry import MODELS, create_model

    torch.manual_seed(0)
    built = create_model(name)
    x = torch.rand(2, *MODELS.get(name).input_shape)

    def run(mode: str):
        model = copy.deepcopy(built).train(mode == "train")  # a first call may set state (ActNorm)
        leaf = x.clone().requires_grad_(True)
        out = model(leaf)
        out.float().sum().backward()
        return out.detach(), leaf.grad, [p.grad for p in model.parameters()]

    for mode in ("eval", "train"):
        reference = run(mode)
        with DEFAULTS[default]():
            got = run(mode)
        assert got[0].device.type == "cpu" and torch.equal(got[0], reference[0]), name
        assert torch.equal(got[1], reference[1])
        assert all(a is None and b is None or torch.equal(a, b) for a, b in zip(got[2], reference[2]))


L2_ONLY = {"l2-bim", "fgm"}


def _attacks() -> list[str]:
    from pellucid.robust.catalogue import ATTACKS

    return list(ATTACKS)


@pytest.mark.parametrize("attack", _attacks())
@pytest.mark.parametrize("default", DEFAULTS)
def test_attacks_build_nothing_on_the_default_device(default, attack, authors_model, few):
    from pellucid.robust import evaluate_robustness
    from pellucid.robust.budgets import Stage
    from pellucid.robust.catalogue import ATTACKS

    fields = set(ATTACKS.get(attack).options.__dataclass_fields__)
    options = {k: v for k, v in SMALL_OPTIONS.items() if k in fields}
    if attack in L2_ONLY:
        options["norm"] = "l2"
    if attack == "autoattack":  # every native component, briefly
        options["budget"] = (Stage("apgd-ce-native", {"steps": 2}), Stage("apgd-t-native", {"steps": 2}),
                             Stage("fab-t-native", {"steps": 2}),
                             Stage("square-native", {"queries": 20}, white_box=False))
    x, y = few[0][:6], few[1][:6]
    reference = evaluate_robustness(authors_model, x, y, attack=attack, eps=0.3, seed=1, **options)
    with DEFAULTS[default]():
        got = evaluate_robustness(authors_model, x, y, attack=attack, eps=0.3, seed=1, **options)
    assert got.adversarial.device.type == "cpu" and got.robust.device.type == "cpu"
    assert torch.equal(got.robust, reference.robust)
    assert torch.equal(got.adversarial, reference.adversarial)


# Captum draws these methods' noise in the default dtype: under a float64 default, other numbers
CAPTUM_NOISE = {"smoothgrad", "gradient-shap"}


def _explainers() -> list[str]:
    from pellucid.explain.methods import EXPLAINERS

    return list(EXPLAINERS)


@pytest.mark.parametrize("method", _explainers())
@pytest.mark.parametrize("default", DEFAULTS)
def test_explainers_build_nothing_on_the_default_device(default, method, authors_model, few):
    from pellucid.explain.methods import create_explainer
    from pellucid.models import create_model

    torch.manual_seed(0)
    # Grad-CAM needs a conv layer: the LeNet's; every other method explains the white-box network
    model = create_model("lenet-mnist35").eval() if "grad-cam" in method else authors_model
    options = {"value_range": (0.0, 1.0)} if method == "smoothgrad" else {}
    x = few[0][:3]
    reference = create_explainer(method, model, **options).attribute(x, target=1)
    with DEFAULTS[default]():
        got = create_explainer(method, model, **options).attribute(x, target=1)
    assert got.device.type == "cpu" and got.dtype == reference.dtype, method
    if default == "float64-dtype" and method in CAPTUM_NOISE:
        assert bool(torch.isfinite(got).all())  # other noise: Captum draws it in the default dtype
    else:
        assert torch.equal(got, reference), method


def _metrics() -> list[str]:
    from pellucid.explain.metrics import METRICS

    return list(METRICS)


@pytest.mark.parametrize("name", _metrics())
@pytest.mark.parametrize("default", DEFAULTS)
def test_metrics_build_nothing_on_the_default_device(default, name, authors_model, few):
    from pellucid.explain.methods import create_explainer
    from pellucid.explain.metrics import METRICS, create_metric

    x, y = few[0][:3], few[1][:3]
    attributions = create_explainer("pullback", authors_model).attribute(x, target=y)
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[..., 8:16, 8:16] = True
    options = {"faithfulness_correlation": dict(subset_size=8, n_draws=4),
               "faithfulness_estimate": dict(features_in_step=112),
               "monotonicity_correlation": dict(n_samples=2, features_in_step=112),
               "infidelity": dict(n_perturbations=4), "max_sensitivity": dict(n_draws=2),
               "deletion": dict(features_in_step=112), "insertion": dict(features_in_step=112),
               "pointing_game": dict(mask=mask), "focus": dict(mask=mask),
               "model_parameter_randomisation": dict(explainer="gradient")}.get(name, {})
    if "value_range" in inspect.signature(METRICS.get(name)).parameters:  # noisy copies stay images
        options["value_range"] = (0.0, 1.0)

    def score():
        out = create_metric(name, **options)(authors_model, x, attributions, y)
        out = getattr(out, "score", getattr(out, "auc", out))
        return out

    reference = score()
    with DEFAULTS[default]():
        got = score()
    assert got.device.type == "cpu" and torch.equal(got, reference), name


# --- strided inputs ------------------------------------------------------------------------------
# The C loops take raw pointers, and several attacks index and paste into their inputs: a batch that
# is a strided view (every other column of a wider tensor) must give what its contiguous copy gives.

def _strided(x: torch.Tensor) -> torch.Tensor:
    out = torch.stack([x, torch.full_like(x, float("nan"))], -1).flatten(-2)[..., ::2]
    assert not out.is_contiguous() and torch.equal(out, x)
    return out


@pytest.mark.parametrize("attack", _attacks())
def test_attacks_give_the_same_on_strided_inputs(attack, authors_model, few):
    from pellucid.robust import evaluate_robustness
    from pellucid.robust.budgets import Stage
    from pellucid.robust.catalogue import ATTACKS

    fields = set(ATTACKS.get(attack).options.__dataclass_fields__)
    options = {k: v for k, v in SMALL_OPTIONS.items() if k in fields}
    if attack in L2_ONLY:
        options["norm"] = "l2"
    if attack == "autoattack":
        options["budget"] = (Stage("apgd-ce-native", {"steps": 2}),
                             Stage("square-native", {"queries": 20}, white_box=False))
    x, y = few[0][:6].contiguous(), few[1][:6]
    reference = evaluate_robustness(authors_model, x, y, attack=attack, eps=0.3, seed=1, **options)
    got = evaluate_robustness(authors_model, _strided(x), y, attack=attack, eps=0.3, seed=1, **options)
    assert torch.equal(got.robust, reference.robust) and torch.equal(got.adversarial, reference.adversarial)


@pytest.mark.parametrize("method", _explainers())
def test_explainers_give_the_same_on_strided_inputs(method, authors_model, few):
    from pellucid.explain.methods import create_explainer
    from pellucid.models import create_model

    torch.manual_seed(0)
    model = create_model("lenet-mnist35").eval() if "grad-cam" in method else authors_model
    options = {"value_range": (0.0, 1.0)} if method == "smoothgrad" else {}
    x = few[0][:3].contiguous()
    reference = create_explainer(method, model, **options).attribute(x, target=1)
    assert torch.equal(create_explainer(method, model, **options).attribute(_strided(x), target=1), reference)
