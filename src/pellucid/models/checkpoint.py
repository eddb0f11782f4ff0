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

from pellucid._config import check_kwargs, check_value
from pellucid._io import save_json_atomic, save_tensors_atomic
from pellucid.data.datasets import check_classes
from pellucid.errors import CheckpointError, InvalidInputError, PellucidError
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
    """The checked ``config.json`` of a model directory.

    Checked here: ``model`` is a str, ``kwargs`` a dict, ``data`` (when present) a dict with a str
    ``dataset`` and ``classes`` a list of integers or null, ``train`` (when present) a dict. The
    ``train`` fields belong to the recipe that wrote them: check them with
    :func:`pellucid._config.check_dataclass_dict` against its config class.
    """
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
    _check_config_types(config, path)
    return config


def _check_config_types(config: dict[str, Any], path: Path) -> None:
    check_value(config["model"], str, f"{path}: model", error=CheckpointError)
    if config.get("kwargs") is not None:
        check_value(config["kwargs"], dict, f"{path}: kwargs", error=CheckpointError)
    if config.get("train") is not None:
        check_value(config["train"], dict, f"{path}: train", error=CheckpointError)
    data = config.get("data")
    if data is None:
        return
    check_value(data, dict, f"{path}: data", error=CheckpointError)
    if "dataset" not in data:
        raise CheckpointError(f"{path}: data.dataset is missing (the registered dataset name, e.g. 'mnist')")
    check_value(data["dataset"], str, f"{path}: data.dataset", error=CheckpointError)
    check_value(data.get("classes"), list[int] | None, f"{path}: data.classes", error=CheckpointError)


def check_config_classes(config: dict[str, Any], where: str = CONFIG) -> tuple[int, ...] | None:
    """The classes a model directory's data section selects, checked against the model registry.

    Label ``i`` of a model always means the ``i``-th class it was trained with. A model registered
    with ``classes`` (e.g. ``(3, 5)``) must list exactly those, in that order: ``[5, 3]`` would
    silently swap the meaning of its logits, ``null`` would evaluate it on classes it never saw.
    Other models may name any ascending subset (or null: all classes). A config without a
    ``data`` section names no data and passes. Raises :class:`CheckpointError` naming ``where``.
    """
    data = config.get("data")
    if data is None:
        return None
    check_value(data, dict, f"{where}: data", error=CheckpointError)
    classes = data.get("classes")
    check_value(classes, list[int] | None, f"{where}: data.classes", error=CheckpointError)
    if classes is not None and len(set(classes)) != len(classes):
        raise CheckpointError(f"{where}: data.classes has duplicate classes: {classes}")
    model = config.get("model")
    spec = MODELS.get(model) if isinstance(model, str) and model in MODELS else None
    if spec is not None and spec.classes is not None:
        if classes is None or list(classes) != list(spec.classes):
            order = (" (the same classes in another order would swap the meaning of its outputs)"
                     if classes is not None and sorted(classes) == sorted(spec.classes) else "")
            raise CheckpointError(
                f"{where}: data.classes {'null' if classes is None else classes} differ from "
                f"{spec.name}'s registered classes "
                f"{list(spec.classes)}{order}; label i must mean the i-th of {list(spec.classes)}")
        return tuple(spec.classes)
    if classes is None:
        return None
    try:
        return check_classes(classes, name="classes")
    except InvalidInputError as e:
        raise CheckpointError(f"{where}: data.{e}") from None


def load_weights(model: nn.Module, path: Path | str) -> nn.Module:
    """Load a safetensors file into ``model``, strictly (:func:`load_state_strict`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} is missing")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"weights file {path} is corrupted: {e}") from None
    return load_state_strict(model, state, path)


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Path | str,
                      mismatch: str = "does not match the model") -> nn.Module:
    """``model.load_state_dict(state)`` after checking that every key and shape matches and every
    tensor is finite; a :class:`CheckpointError` naming ``path`` and the offending tensors else."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''} ({len(keys)})"
                 for label, keys in (("missing", missing), ("unexpected", unexpected),
                                     ("wrong shape", wrong)) if keys]
        raise CheckpointError(f"{path} {mismatch} ({'; '.join(parts)})")
    bad = [f"{k} ({'NaN' if bool(torch.isnan(t).any()) else 'inf'})" for k, t in sorted(state.items())
           if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(
            f"{path} holds non-finite weights (NaN or inf) in {len(bad)} tensor"
            f"{'s' if len(bad) != 1 else ''}: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; "
            "the training diverged or the file was damaged: retrain, or use an earlier checkpoint")
    model.load_state_dict(state)
    return model


def load_model(directory: Path | str, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model saved in ``directory``; returns ``(model in eval mode, config)``.

    The config's ``kwargs`` must be parameters of the registered builder, of the types it
    declares; its ``data.classes`` must agree with the registry (:func:`check_config_classes`);
    every weight must be finite.
    """
    config = read_config(directory)
    path = Path(directory) / CONFIG
    if config["model"] not in MODELS:
        raise CheckpointError(f"{directory} holds unknown model {config['model']!r}; "
                              f"known: {', '.join(MODELS)}")
    kwargs = check_kwargs(MODELS.get(config["model"]).builder, config.get("kwargs") or {},
                          f"{path}: kwargs", error=CheckpointError)
    check_config_classes(config, str(path))
    try:
        model = create_model(config["model"], **kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has bad model arguments: {e}") from None
    load_weights(model, Path(directory) / WEIGHTS)
    return model.to(map_location).eval(), config


def is_model_dir(path: Path | str) -> bool:
    try:
        read_config(path)
        return True
    except PellucidError:
        return False
