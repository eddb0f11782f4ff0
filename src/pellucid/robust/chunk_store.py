"""Finished chunks of an evaluation kept on disk, so an interrupted evaluation loses at most a chunk.

:func:`pellucid.robust.evaluate.evaluate_robustness` attacks its images chunk by chunk, and a
chunk's results depend only on the seed, the attack, its options and the chunk's images (see
:func:`~pellucid.robust.evaluate.chunk_generator`). A :class:`ChunkStore` saves each finished
chunk (adversarial images, clean and adversarial logits, the in-budget mask, the stage log and
the attack's info) as one safetensors file, and the same evaluation run again, by any number of
processes, loads those chunks instead of attacking them again: the merged result is the one an
uninterrupted run gives, image by image. The store is a directory named by everything that
identifies the evaluation (``key``); a file is used only if its recorded key and image range
are the ones asked for and its tensors have the chunk's shapes.

Each file is written atomically (temporary file, fsync, rename), and its content is a function of
the key alone, so two processes writing the same chunk write the same bytes: no lock is needed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from pellucid._io import save_tensors_atomic
from pellucid.robust.evaluate import ChunkResult

__all__ = ["ChunkStore"]

TENSORS = ("adversarial", "clean_logits", "adversarial_logits", "inside")


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _exact_json(value: Any) -> str | None:
    """``value`` as JSON if it reads back equal (no tuple, tensor or float subtype lost)."""
    try:
        text = json.dumps(value, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError):
        return None
    return text if json.loads(text) == value and _same_types(json.loads(text), value) else None


def _same_types(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_types(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same_types(x, y) for x, y in zip(a, b))
    return True


class ChunkStore:
    """Finished chunks of the evaluation identified by ``key`` (a JSON-ready dict), in
    ``root / <digest of key>``. ``discard()`` removes them once the evaluation is recorded."""

    def __init__(self, root: Path | str, key: dict[str, Any]) -> None:
        self.key = json.loads(json.dumps(key, sort_keys=True, default=str))
        self.directory = Path(root) / key_digest(self.key)
        self._failed_save = False

    def _path(self, start: int, stop: int) -> Path:
        return self.directory / f"chunk-{start:08d}-{stop:08d}.safetensors"

    def has(self, start: int, stop: int) -> bool:
        return self._path(start, stop).is_file()

    def load(self, index: int, start: int, stop: int, like: torch.Tensor) -> ChunkResult | None:
        """The saved chunk of images ``start:stop`` on ``like``'s device, or ``None`` if there is
        none or it is unreadable or not this evaluation's (reported on stderr, then attacked again)."""
        path = self._path(start, stop)
        if not path.is_file():
            return None
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            if json.loads(meta["key"]) != self.key or json.loads(meta["range"]) != [start, stop]:
                raise ValueError("it belongs to another evaluation")
            n = stop - start
            shapes = {"adversarial": (n, *like.shape[1:]), "inside": (n,)}
            for name in TENSORS:
                t = tensors[name]
                want = shapes.get(name)
                if (want is not None and tuple(t.shape) != want) or t.shape[0] != n:
                    raise ValueError(f"{name} has shape {tuple(t.shape)}")
            stages, info = json.loads(meta["stages"]), json.loads(meta["info"])
        except (OSError, SafetensorError, KeyError, ValueError) as e:
            print(f"pellucid: warning: ignoring the saved chunk {path} ({e}); attacking its images again",
                  file=sys.stderr)
            return None
        on = {name: tensors[name].to(like.device) for name in TENSORS}
        return ChunkResult(index, on["adversarial"], on["clean_logits"], on["adversarial_logits"],
                           on["inside"], stages, info)

    def save(self, start: int, stop: int, chunk: ChunkResult) -> bool:
        """Save a finished chunk; ``False`` (and one warning per store) if it cannot be saved,
        because a value does not survive JSON or the disk refuses: the evaluation goes on."""
        stages_json, info_json = _exact_json(chunk.stages), _exact_json(chunk.info)
        if self._failed_save:
            return False
        try:
            if stages_json is None or info_json is None:
                raise ValueError("its log holds values JSON does not keep exactly")
            save_tensors_atomic(self._path(start, stop), {name: getattr(chunk, name) for name in TENSORS},
                                {"key": json.dumps(self.key, sort_keys=True), "range": json.dumps([start, stop]),
                                 "stages": stages_json, "info": info_json})
        except (OSError, ValueError) as e:
            self._failed_save = True
            print(f"pellucid: warning: cannot keep finished chunks in {self.directory} ({e}); an "
                  "interrupted evaluation will start over", file=sys.stderr)
            return False
        return True

    def discard(self) -> None:
        """Remove the store's directory (the evaluation is recorded), and the root if now empty."""
        shutil.rmtree(self.directory, ignore_errors=True)
        try:
            self.directory.parent.rmdir()
        except OSError:
            pass
