"""What a weights file is, told from its first bytes and its zip listing: nothing is unpickled or run.

A TorchScript archive (``torch.jit.save``) carries code (``code/`` entries, ``constants.pkl``) that
``torch.jit.load`` runs while loading (``__setstate__`` and the like), and a plain pickle can name
any callable. pellucid reads a weights file someone hands it only as safetensors, or as a
``torch.save`` file through ``torch.load(..., weights_only=True)`` (tensors and containers only);
:func:`check_weights_file` refuses TorchScript archives before any loader opens them.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

from pellucid.errors import CheckpointError

__all__ = ["KINDS", "check_weights_file", "first_line", "sniff_weights_file"]

# what sniff_weights_file answers
KINDS = ("safetensors", "torch-zip", "torchscript", "zip", "pickle", "unknown")


def sniff_weights_file(path: Path | str) -> str:
    """One of :data:`KINDS`, from the file's header and (for zip files) its member names.

    ``torch-zip``: a ``torch.save`` archive (``data.pkl``, no code); ``torchscript``: a
    ``torch.jit.save`` archive (``constants.pkl`` or ``code/`` members); ``zip``: any other zip;
    ``pickle``: a pickle stream (the legacy ``torch.save`` format, protocol >= 2).
    """
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    if len(head) == 9 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if 2 <= header_len <= size - 8:
            return "safetensors"
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return "unknown"
        # torch archives keep every record under one top folder: "<name>/data.pkl", ...
        records = {name.split("/", 1)[1] if "/" in name else name for name in names}
        if "constants.pkl" in records or any(r.startswith("code/") for r in records):
            return "torchscript"
        return "torch-zip" if "data.pkl" in records else "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    return "unknown"


def check_weights_file(path: Path | str, what: str = "weights file", hint: str = "") -> str:
    """:func:`sniff_weights_file`, raising :class:`CheckpointError` for a missing path, a
    directory, or a TorchScript archive (``what`` names the option in the message)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is a directory, not a weights file (.safetensors, .pth)")
    try:
        kind = sniff_weights_file(path)
    except OSError as e:
        raise CheckpointError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if kind == "torchscript":
        raise CheckpointError(
            f"{what} {path} is a TorchScript archive, which holds code that loading would run; "
            "pellucid reads weights only from .safetensors files or torch.save state dicts (export "
            f"the module's state_dict() where you trust the file){hint}")
    return kind


def first_line(error: BaseException) -> str:
    """``"Type: first line of the message"``: loaders' messages can run over many lines."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0].strip()}" if lines else type(error).__name__
