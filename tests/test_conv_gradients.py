"""Direct-kernel input gradients of few-channel convolutions (pellucid.nn.conv_gradients)."""

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pellucid.models.inference import attack_mode
from pellucid.nn.conv_gradients import (_DirectInputGradient, direct_conv_input_gradients,
                                        uses_direct_input_gradient)
from pellucid.robust import pgd

CASES = [  # (in, out, kernel, stride, padding, bias)
    (1, 6, 5, 1, 2, True),
    (3, 4, 3, 2, 1, False),
    (2, 5, 3, 1, 0, True),
]


def reference_input_gradient(g: torch.Tensor, weight: torch.Tensor, size: tuple, stride: int,
                             padding: int) -> torch.Tensor:
    """dL/dx of a conv2d from its definition: each output position sends g * W back to the
    patch it read (columns W^T g, then summed into place by F.fold)."""
    cols = torch.einsum("bohw,ok->bkhw", g, weight.flatten(1)).flatten(2)  # (B, C*k*k, H'*W')
    return F.fold(cols, size, weight.shape[2:], stride=stride, padding=padding)


def grads(conv: nn.Module, x: torch.Tensor, g: torch.Tensor):
    leaf = x.clone().requires_grad_(True)
    out = conv(leaf)
    (out * g).sum().backward()
    params = [p.grad.clone() for p in conv.parameters()]
    conv.zero_grad(set_to_none=True)
    return out.detach(), leaf.grad, params


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES)
def test_same_forward_and_the_gradient_of_the_definition(case, dtype):
    cin, cout, k, stride, pad, bias = case
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=bias).to(dtype)
    x = torch.randn(7, cin, 13, 12, dtype=dtype)
    g = torch.randn_like(conv(x))
    out0, gx0, gp0 = grads(conv, x, g)
    with direct_conv_input_gradients(conv):
        out1, gx1, gp1 = grads(conv, x, g)
    assert torch.equal(out0, out1)  # the layer's own forward: the same bits
    ref = reference_input_gradient(g.double(), conv.weight.double(), x.shape[2:], stride, pad)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(gx1.double(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(gx1, gx0, rtol=tol, atol=tol)
    for a, b in zip(gp1, gp0):  # parameter gradients: PyTorch's own backward
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
def test_the_kernel_pytorch_runs_without_onednn_bit_for_bit():
    torch.manual_seed(1)
    conv = nn.Conv2d(1, 8, 5, padding=2)
    x, g = torch.rand(16, 1, 28, 28), torch.randn(16, 8, 28, 28)
    with torch.backends.mkldnn.flags(enabled=False):
        _, native, _ = grads(conv, x, g)
    with direct_conv_input_gradients(conv):
        _, direct, _ = grads(conv, x, g)
    assert torch.equal(direct, native)


def test_frozen_parameters_get_no_gradient_and_input_only_grad_works():
    conv = nn.Conv2d(1, 3, 3).requires_grad_(False)
    x = torch.rand(2, 1, 6, 6, requires_grad=True)
    with direct_conv_input_gradients(conv):
        out = conv(x)
        assert out.grad_fn is not None and "DirectInputGradient" in type(out.grad_fn).__name__
        (gx,) = torch.autograd.grad(out.sum(), x)
    assert conv.weight.grad is None and gx.shape == x.shape and torch.isfinite(gx).all()


def test_which_layers_are_rerouted():
    class Standardised(nn.Conv2d):  # a subclass with its own forward computes something else
        def forward(self, x):
            return F.conv2d(x, self.weight - self.weight.mean(), self.bias)

    assert uses_direct_input_gradient(nn.Conv2d(3, 8, 3))
    for m in (nn.Conv2d(4, 8, 3), nn.Conv2d(2, 2, 3, groups=2), nn.Conv2d(1, 8, 3, dilation=2),
              nn.Conv2d(1, 8, 3, padding="same"), nn.Conv2d(1, 8, 3, padding=1, padding_mode="reflect"),
              Standardised(1, 8, 3), nn.Linear(3, 3), nn.Conv1d(1, 4, 3)):
        assert not uses_direct_input_gradient(m), m


def test_hooks_are_removed_on_exit_even_on_errors_and_nesting_works():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten())
    x = torch.rand(3, 1, 8, 8, requires_grad=True)
    (expected,) = torch.autograd.grad(net(x).square().sum(), x)
    with pytest.raises(KeyError):
        with direct_conv_input_gradients(net):
            assert len(net[0]._forward_hooks) == 1 and not net[2]._forward_hooks
            raise KeyError("boom")
    assert not any(m._forward_hooks for m in net.modules())
    with direct_conv_input_gradients(net), direct_conv_input_gradients(net):
        assert len(net[0]._forward_hooks) == 2
        (nested,) = torch.autograd.grad(net(x).square().sum(), x)
    torch.testing.assert_close(nested, expected, rtol=1e-5, atol=1e-6)
    assert not any(m._forward_hooks for m in net.modules())


def test_left_alone_without_grad_unbatched_or_other_dtypes():
    conv = nn.Conv2d(1, 2, 3)
    with direct_conv_input_gradients(conv):
        with torch.no_grad():
            assert conv(torch.rand(2, 1, 5, 5)).grad_fn is None
        unbatched = conv(torch.rand(1, 5, 5, requires_grad=True))
        assert "DirectInputGradient" not in type(unbatched.grad_fn).__name__
        half = conv.to(torch.bfloat16)(torch.rand(2, 1, 5, 5, dtype=torch.bfloat16, requires_grad=True))
        assert "DirectInputGradient" not in type(half.grad_fn).__name__


def test_double_backward_is_refused_not_silently_wrong():
    conv = nn.Conv2d(1, 2, 3)
    x = torch.rand(2, 1, 5, 5, requires_grad=True)
    with direct_conv_input_gradients(conv):
        (gx,) = torch.autograd.grad(conv(x).square().sum(), x, create_graph=True)
        with pytest.raises(RuntimeError):
            torch.autograd.grad(gx.sum(), x)


def test_concurrent_blocks_on_one_model():
    torch.manual_seed(2)
    conv = nn.Conv2d(1, 4, 3)
    x = torch.rand(4, 1, 9, 9)
    results, errors, start = [], [], threading.Barrier(4)

    def work():
        try:
            start.wait()
            with direct_conv_input_gradients(conv):
                leaf = x.clone().requires_grad_(True)
                results.append(torch.autograd.grad(conv(leaf).square().sum(), leaf)[0])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4
    for r in results[1:]:
        torch.testing.assert_close(r, results[0])
    assert not conv._forward_hooks


def test_attacks_use_it(monkeypatch):
    calls = []
    real = _DirectInputGradient.backward

    def spy(ctx, *grads):
        calls.append(1)
        return real(ctx, *grads)

    monkeypatch.setattr(_DirectInputGradient, "backward", staticmethod(spy))
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(1, 4, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(4 * 14 * 14, 3))
    x, y = torch.rand(6, 1, 28, 28), torch.tensor([0, 1, 2, 0, 1, 2])
    adv = pgd(net, x, y, eps=0.1, steps=3, step_size=0.05, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 3 and (adv - x).abs().max() <= 0.1 + 1e-6
    assert not any(m._forward_hooks for m in net.modules())
    with attack_mode(net):
        assert not net.training and len(net[0]._forward_hooks) == 1


@pytest.mark.parametrize("name", ["whitebox-mnist35", "whitebox-mnist10", "whitebox-fashion10"])
def test_white_box_networks_have_no_rerouted_layer(name):
    from pellucid.models import create_model

    # their attacks stay bit-identical to those recorded before the hooks existed
    assert not any(uses_direct_input_gradient(m) for m in create_model(name).modules())
