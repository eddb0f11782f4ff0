"""The page's output images as finished PNG files, one per answer.

Why not hand Gradio the arrays: given an array, Gradio (6.x, ``save_pil_to_cache``) writes its PNG
to a cache path named by the image's content hash, truncating and rewriting that file in place.
Two users shown the same image at once (the same digit, the noise preset) then race: one browser
fetches the file while the other request has just truncated it, and receives an empty body. Given
a path instead, Gradio copies the file into its cache under a temporary name and renames it into
place, which never exposes a partial file. So each image is written here, whole, under a name no
other request uses, before Gradio sees it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["ImageFiles"]


class ImageFiles:
    """A private directory of PNG files for one page.

    ``png(array)`` writes an ``(H, W)`` or ``(H, W, 3)`` uint8 array under a fresh name and returns
    its path; files older than ``keep_seconds`` are removed on later writes (Gradio has copied
    them into its own cache by the time the event returns), and the directory goes with the object
    or at interpreter exit.
    """

    def __init__(self, keep_seconds: float = 600.0) -> None:
        self.keep_seconds = float(keep_seconds)
        self.dir = Path(tempfile.mkdtemp(prefix="pellucid-app-images-"))
        self._sweep_lock = threading.Lock()
        self._remove = weakref.finalize(self, shutil.rmtree, str(self.dir), True)

    def png(self, array: np.ndarray) -> str:
        from PIL import Image

        image = Image.fromarray(np.ascontiguousarray(array))
        self._sweep()
        fd, path = tempfile.mkstemp(suffix=".png", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as f:
                image.save(f, format="PNG")
        except BaseException:
            Path(path).unlink(missing_ok=True)
            raise
        return path

    def convert(self, kinds: Sequence[str | None], values: Sequence) -> tuple:
        """``values`` with each array whose kind is ``"image"`` written to a file, and each pair of
        arrays whose kind is ``"pair"`` (an image slider) written to two; anything else (``None``,
        text, state) unchanged."""
        if len(kinds) != len(values):
            raise ValueError(f"{len(values)} outputs for {len(kinds)} components")

        def one(value):
            return self.png(value) if isinstance(value, np.ndarray) else value

        return tuple(one(v) if k == "image" else tuple(map(one, v)) if k == "pair" and v is not None else v
                     for k, v in zip(kinds, values))

    def close(self) -> None:
        """Remove the directory now."""
        self._remove()

    def _sweep(self) -> None:
        if not self._sweep_lock.acquire(blocking=False):
            return  # another request is sweeping
        try:
            cutoff = time.time() - self.keep_seconds
            for entry in os.scandir(self.dir):
                try:
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                except FileNotFoundError:
                    pass
        finally:
            self._sweep_lock.release()
