"""Model directories: ``model.safetensors`` (weights) + ``config.json`` (how to rebuild them).

Never pickles: weights are safetensors, everything else is JSON, both written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from pellucid._io import save_json_atomic, save_tensors_atomic
from pellucid.errors import CheckpointError, PellucidError
from pellucid.models.registry import MODELS, create_model

FORMAT = "pellucid-model/1"
WEIGHTS, CONFIG = "model.safetensors", "config.json"


def save_model(model: nn.Module, directory: Path | str, name: str,
               kwargs: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights and the config to rebuild it (registry ``name`` + ``kwargs``)."""
    directory = Path(directory)
    save_tensors_atomic(directory / WEIGHTS, model.state_dict(), {"format": FORMAT, "model": name})
    config = {"format": FORMAT, "model": name, "kwargs": kwargs or {}, **(extra or {})}
    save_json_atomic(directory / CONFIG, config)
    return directory


def read_config(directory: Path | str) -> dict[str, Any]:
    directory = Path(directory)
    path = directory / CONFIG
    if not directory.is_dir():
        raise CheckpointError(f"model directory {directory} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a pellucid model directory (no {CONFIG}); "
                              "train one with `pellucid train`")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupted: {e}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT or "model" not in config:
        raise CheckpointError(f"{path} is not a {FORMAT} config")
    return config


def load_weights(model: nn.Module, path: Path | str) -> nn.Module:
    """Load a safetensors file into ``model``, strictly: every key and shape must match."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} is missing")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"weights file {path} is corrupted: {e}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected),
                                     ("wrong shape", wrong)) if keys]
        raise CheckpointError(f"{path} does not match the model ({'; '.join(parts)})")
    model.load_state_dict(state)
    return model


def load_model(directory: Path | str, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model saved in ``directory``; returns ``(model in eval mode, config)``."""
    config = read_config(directory)
    if config["model"] not in MODELS:
        raise CheckpointError(f"{directory} holds unknown model {config['model']!r}; "
                              f"known: {', '.join(MODELS)}")
    try:
        model = create_model(config["model"], **config.get("kwargs", {}))
    except TypeError as e:
        raise CheckpointError(f"{directory}/{CONFIG} has bad model arguments: {e}") from None
    load_weights(model, Path(directory) / WEIGHTS)
    return model.to(map_location).eval(), config


def is_model_dir(path: Path | str) -> bool:
    try:
        read_config(path)
        return True
    except PellucidError:
        return False
