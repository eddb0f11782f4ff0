"""torchvision ImageNet classifiers by name, taking images in [0, 1] (normalisation done once, here).

``create_model("resnet50")`` is randomly initialised; ``create_model("resnet50", weights="DEFAULT")``
(or any torchvision weights name such as ``"IMAGENET1K_V2"``) downloads torchvision's weights when
online; ``weights="/path/to/file.pth"`` (or ``.safetensors``) loads a local state dict, with or
without the ``net.`` prefix of :class:`ImageNetClassifier`. Local files are read as tensors only
(safetensors, or ``torch.load(weights_only=True)``); TorchScript archives are refused unopened.
"""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import torch
from torch import nn

from pellucid.errors import CheckpointError
from pellucid.models.archive import check_weights_file, first_line
from pellucid.models.registry import register_model

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageNetClassifier", "Normalize", "build_torchvision"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel (non-persistent buffers: not part of the checkpoint)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ImageNetClassifier(nn.Module):
    """``x in [0, 1], (B, 3, H, W) -> net(normalize(x))``: 1000 ImageNet logits."""

    def __init__(self, net: nn.Module, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


# name -> (input size, extra kwargs for random init)
_ARCHITECTURES = {
    "resnet50": (224, {}),
    "vgg11_bn": (224, {}),
    "densenet121": (224, {}),
    "resnext50_32x4d": (224, {}),
    "inception_v3": (299, {"aux_logits": False, "init_weights": True}),
    "googlenet": (224, {"aux_logits": False, "init_weights": True}),
}


def build_torchvision(arch: str, weights: str | Path | None = None) -> ImageNetClassifier:
    """torchvision ``arch`` wrapped to take [0, 1] images; ``weights``: None, a torchvision weights
    name (``"DEFAULT"``, ``"IMAGENET1K_V1"``, ...) or a local ``.pth``/``.pt``/``.safetensors`` file."""
    # imported here: torchvision.models pulls in torch._dynamo (~2.5 s), which every CLI start paid
    import torchvision.models

    builder = getattr(torchvision.models, arch)
    if weights is None:
        return ImageNetClassifier(builder(weights=None, **_ARCHITECTURES[arch][1])).eval()
    path = Path(weights)
    if path.suffix in (".pth", ".pt", ".safetensors", ".bin") or path.exists():
        # the architecture torchvision builds for its own weights (Inception/GoogLeNet: aux heads,
        # transform_input), so that torchvision state dicts load strictly
        extra = {"aux_logits": True, "transform_input": True, "init_weights": False} \
            if arch in ("inception_v3", "googlenet") else {}
        model = ImageNetClassifier(builder(weights=None, **extra))
        _load_local(model, path)
        return model.eval()
    try:
        tv_weights = torchvision.models.get_model_weights(arch)[str(weights)]
    except KeyError:
        known = ", ".join(["DEFAULT", *torchvision.models.get_model_weights(arch).__members__])
        raise CheckpointError(f"unknown weights {weights!r} for {arch}; use one of {known}, "
                              "a local weights file, or none") from None
    try:
        return ImageNetClassifier(builder(weights=tv_weights)).eval()
    except (URLError, OSError, RuntimeError) as e:
        raise CheckpointError(f"could not download torchvision weights {arch}.{weights} ({e}); "
                              "offline, pass a local weights file (weights=PATH) or use the offline "
                              "ImageNet model 'fid-inception'") from None


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, inputs: torch.Tensor) -> nn.Module:
    """Give a randomly initialised network realistic batch-norm statistics, in place.

    Resets every BatchNorm's running mean/variance and replaces them with the cumulative average
    over one forward pass of ``inputs`` in train mode (momentum None); returns ``model`` in eval
    mode. Random-init benchmarks and tests then see activations of a sane scale.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None
            m.reset_running_stats()
    model.train()
    model(inputs)
    return model.eval()


def _load_local(model: ImageNetClassifier, path: Path) -> None:
    kind = check_weights_file(path)  # refuses TorchScript before torch.load sees it
    try:
        if path.suffix == ".safetensors" or kind == "safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load / safetensors raise many types for corrupt files
        raise CheckpointError(f"cannot read weights file {path}: {first_line(e)}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict")
    if not any(k.startswith("net.") for k in state):
        state = {f"net.{k}": v for k, v in state.items()}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{path} does not match {type(model.net).__name__}: "
                              f"{str(e).splitlines()[-1].strip()}") from None
    if result.missing_keys or result.unexpected_keys:
        parts = [f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                 for label, keys in (("missing", result.missing_keys),
                                     ("unexpected", result.unexpected_keys)) if keys]
        raise CheckpointError(f"{path} does not match {type(model.net).__name__} ({'; '.join(parts)})")


def _register(arch: str) -> None:
    size = _ARCHITECTURES[arch][0]

    def build(weights: str | None = None) -> ImageNetClassifier:
        return build_torchvision(arch, weights)

    build.__name__ = arch
    register_model(arch, input_shape=(3, size, size), dataset="imagenet",
                   summary=f"torchvision {arch} (ImageNet, {size} px, input in [0, 1]); "
                           "weights=None|torchvision name|file")(build)


for _arch in _ARCHITECTURES:
    _register(_arch)
