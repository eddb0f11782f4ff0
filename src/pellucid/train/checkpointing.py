"""Training state in one atomic safetensors file: model, optimizer, RNG and epoch together.

A crash can therefore never leave weights from epoch k beside an optimizer from epoch k - 1.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from pellucid._io import save_bytes_atomic, save_tensors_atomic
from pellucid.errors import CheckpointError

STATE_FILE = "train_state.safetensors"
METRICS_FILE = "metrics.jsonl"


class Optimizer(Protocol):
    """What is checkpointed of an optimizer: ``torch.optim.Optimizer`` or :class:`pellucid.train.optim.Adam`."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


def save_train_state(path: Path, model: nn.Module, optimizer: Optimizer,
                     generator: torch.Generator, info: dict[str, Any]) -> None:
    opt = optimizer.state_dict()
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for idx, state in opt["state"].items():
        for name, value in state.items():
            tensors[f"optim.{idx}.{name}"] = torch.as_tensor(value)
    tensors["rng.generator"] = generator.get_state()
    meta = {"info": json.dumps(info), "param_groups": json.dumps(opt["param_groups"])}
    save_tensors_atomic(path, tensors, meta)


def load_train_state(path: Path, model: nn.Module, optimizer: Optimizer,
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
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"cannot resume: {path} holds another optimizer's state ({e})") from None
    generator.set_state(tensors["rng.generator"])
    return info


def start_or_resume(out: Path, resume: bool, cfg: Any, model: nn.Module, optimizer: Optimizer,
                    generator: torch.Generator, may_change: tuple[str, ...] = ("epochs",)
                    ) -> tuple[int, list[dict[str, Any]]]:
    """Begin a run in ``out``, or (``resume=True``) restore the one there: ``(epochs done, their metrics)``.

    ``cfg`` is the run's settings dataclass. A resumed run must have the same settings except
    those in ``may_change``; a setting added to the dataclass after the run started reads as its
    default. Without ``resume`` an existing run in ``out`` is refused rather than overwritten.
    """
    state_path = out / STATE_FILE
    if not resume:
        if state_path.exists() or (out / METRICS_FILE).exists():
            raise CheckpointError(f"{out} already holds a training run; use --resume or a new --out")
        return 0, []
    if not state_path.is_file():
        raise CheckpointError(f"nothing to resume in {out} (no {STATE_FILE}); drop --resume")
    info = load_train_state(state_path, model, optimizer, generator)
    defaults = {f.name: f.default for f in fields(cfg)}
    saved = {k: v for k, v in {**defaults, **(info.get("config") or {})}.items() if k not in may_change}
    wanted = {k: v for k, v in asdict(cfg).items() if k not in may_change}
    if saved != wanted:
        diff = sorted(k for k in wanted if saved.get(k) != wanted[k])
        raise CheckpointError(f"cannot resume {out}: it was started with different settings "
                              f"({', '.join(f'{k}={saved.get(k)}' for k in diff)})")
    done = int(info["epoch"])
    metrics = out / METRICS_FILE
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() else []
    return done, [r for r in rows if r["epoch"] <= done]


def save_epoch(out: Path, model: nn.Module, optimizer: Optimizer, generator: torch.Generator,
               cfg: Any, history: list[dict[str, Any]]) -> None:
    """After an epoch: the resumable state (the authority on resume), then the metrics so far."""
    save_train_state(out / STATE_FILE, model, optimizer, generator, {"epoch": history[-1]["epoch"], "config": asdict(cfg)})
    save_bytes_atomic(out / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in history).encode())
