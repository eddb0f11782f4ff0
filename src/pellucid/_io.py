"""Atomic file writes: a crash never leaves a half-written checkpoint or metrics file behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save_file


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same directory, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)  # atomic on POSIX and Windows
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_json_atomic(path: Path | str, obj: Any) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")

    _atomic_write(Path(path), write)


def save_tensors_atomic(path: Path | str, tensors: Mapping[str, torch.Tensor],
                        metadata: Mapping[str, str] | None = None) -> None:
    # safetensors refuses non-contiguous tensors and tensors that share memory
    flat = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    _atomic_write(Path(path), lambda tmp: save_file(flat, tmp, metadata=dict(metadata or {})))


def save_bytes_atomic(path: Path | str, data: bytes) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    _atomic_write(Path(path), write)
