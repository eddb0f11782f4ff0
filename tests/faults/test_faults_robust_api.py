"""Issue 17, item 20: dtypes and labels at the robustness API's entry points."""

from __future__ import annotations

import pytest
import torch

from pellucid.errors import InputTypeError, InvalidInputError
from pellucid.models import create_model
from pellucid.robust import evaluate_robustness, fgsm, pgd, run_attack
from pellucid.robust.evaluate import accuracy_vs_eps, predict_logits


def _lenet():
    torch.manual_seed(0)
    return create_model("lenet-mnist35").eval()


def _batch(n=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=gen), torch.tensor([0, 1] * (n // 2))


ENTRY_POINTS = {
    "predict_logits": lambda m, x, y: predict_logits(m, x),
    "pgd": lambda m, x, y: pgd(m, x, y, eps=0.1, steps=1, generator=torch.Generator().manual_seed(0)),
    "fgsm": lambda m, x, y: fgsm(m, x, y, eps=0.1),
    "run_attack": lambda m, x, y: run_attack("pgd", m, x, y, eps=0.1, steps=1,
                                             generator=torch.Generator().manual_seed(0)),
    "evaluate_robustness": lambda m, x, y: evaluate_robustness(m, x, y, eps=0.1, steps=1),
    "accuracy_vs_eps": lambda m, x, y: accuracy_vs_eps(m, x, y, [0.0, 0.1], steps=1),
}
LABELLED = [k for k in ENTRY_POINTS if k != "predict_logits"]


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("x_dtype,m_dtype", [(torch.float64, torch.float32), (torch.float32, torch.float64),
                                             (torch.float16, torch.float32)])
def test_item20_dtype_mismatch_is_a_clear_type_error(entry, x_dtype, m_dtype):
    model, (x, y) = _lenet().to(m_dtype), _batch()
    with pytest.raises(InputTypeError) as err:
        ENTRY_POINTS[entry](model, x.to(x_dtype), y)
    msg = str(err.value)
    assert str(x_dtype) in msg and str(m_dtype) in msg and "model." in msg  # both dtypes and the fix
    assert isinstance(err.value, TypeError) and isinstance(err.value, InvalidInputError)


@pytest.mark.parametrize("entry", LABELLED)
@pytest.mark.parametrize("labels,needle", [
    (torch.tensor([0.0, 1.0, 0.0, 1.0]), "integer"),
    (torch.tensor([[0], [1], [0], [1]]), r"shape \(4,\)"),
    (torch.tensor([0, 1, 0]), r"shape \(4,\)"),
    (torch.tensor([0, 1, 2, 1]), r"0\.\.1"),
    (torch.tensor([0, -1, 0, 1]), r"0\.\.1"),
    (torch.tensor([True, False, True, False]), "integer"),
    ([0, 1, 0, 1], "torch.Tensor"),
])
def test_item20_bad_labels_are_clear_errors(entry, labels, needle):
    model, (x, _) = _lenet(), _batch()
    with pytest.raises(InvalidInputError, match=needle):
        ENTRY_POINTS[entry](model, x, labels)


@pytest.mark.parametrize("entry", LABELLED)
@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.int16])
def test_item20_any_integer_label_dtype_works(entry, dtype):
    model, (x, y) = _lenet(), _batch()
    ref = ENTRY_POINTS[entry](model, x, y)
    got = ENTRY_POINTS[entry](model, x, y.to(dtype))
    if isinstance(ref, torch.Tensor):
        assert torch.equal(ref, got)
    elif isinstance(ref, list):
        assert ref == got
    else:
        assert torch.equal(ref.adversarial, got.adversarial if hasattr(got, "adversarial") else got)


@pytest.mark.parametrize("name", ["lenet-mnist35", "whitebox-mnist35"])
def test_item20_float64_model_on_float64_inputs_matches_float32(name, mnist35_test):
    torch.manual_seed(0)
    model = create_model(name).eval()
    x, y = mnist35_test.images[:32], mnist35_test.labels[:32]
    l32 = predict_logits(model, x)
    l64 = predict_logits(model.double(), x.double())
    assert l64.dtype == torch.float64 and torch.equal(l32.argmax(1), l64.argmax(1))
    assert torch.allclose(l64.float(), l32, atol=1e-4)
    r64 = evaluate_robustness(model, x.double(), y, eps=0.1, steps=2, seed=1)
    r32 = evaluate_robustness(model.float(), x, y, eps=0.1, steps=2, seed=1)
    assert r64.clean_accuracy == r32.clean_accuracy and r64.adversarial.dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_item20_whitebox_runs_in_half_precision(dtype, authors_model, mnist35_test):
    x = mnist35_test.images[:64]
    l32 = predict_logits(authors_model, x)
    half = create_model("whitebox-mnist35").eval()
    half.load_state_dict(authors_model.state_dict())
    low = predict_logits(half.to(dtype), x.to(dtype))
    assert low.dtype == dtype
    top2 = l32.topk(2, 1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.5  # predictions that rounding cannot flip
    assert clear.sum() > 32 and torch.equal(low.float().argmax(1)[clear], l32.argmax(1)[clear])


@pytest.mark.parametrize("eps_values,needle", [(["a"], "eps"), ([0.1, -0.1], "eps"),
                                               ([float("nan")], "eps"), ([], "at least one")])
def test_item20_accuracy_vs_eps_checks_eps_before_any_work(eps_values, needle):
    model, (x, y) = _lenet(), _batch()
    with pytest.raises(InvalidInputError, match=needle):
        accuracy_vs_eps(model, x, y, eps_values, steps=1)


def test_item20_model_on_another_device_is_named():
    model, (x, y) = _lenet().to("meta"), _batch()
    with pytest.raises(InvalidInputError, match="meta"):
        predict_logits(model, x)
