"""Training state in one atomic safetensors file: model, optimizer, RNG and epoch together.

A crash can therefore never leave weights from epoch k beside an optimizer from epoch k - 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from pellucid._io import save_tensors_atomic
from pellucid.errors import CheckpointError

STATE_FILE = "train_state.safetensors"


def save_train_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                     generator: torch.Generator, info: dict[str, Any]) -> None:
    opt = optimizer.state_dict()
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for idx, state in opt["state"].items():
        for name, value in state.items():
            tensors[f"optim.{idx}.{name}"] = torch.as_tensor(value)
    tensors["rng.generator"] = generator.get_state()
    meta = {"info": json.dumps(info), "param_groups": json.dumps(opt["param_groups"])}
    save_tensors_atomic(path, tensors, meta)


def load_train_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                     generator: torch.Generator) -> dict[str, Any]:
    """Restore everything saved by :func:`save_train_state`; returns its ``info`` dict."""
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        info, groups = json.loads(meta["info"]), json.loads(meta["param_groups"])
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise CheckpointError(f"cannot resume: {path} is corrupted ({e})") from None
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    except RuntimeError as e:
        raise CheckpointError(f"cannot resume: {path} does not match the model ({e})") from None
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    generator.set_state(tensors["rng.generator"])
    return info
