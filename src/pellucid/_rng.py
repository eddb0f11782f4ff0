"""Seeded blocks on the process-wide random generators, one thread at a time.

pellucid draws from explicit ``torch.Generator`` objects wherever it can. Some third-party code
cannot be given one: Captum draws SmoothGrad's and GradientSHAP's noise from torch's default
generator, ART draws from NumPy's global ``RandomState``, and ``reset_parameters`` initialises
from torch's default generator. :func:`seeded_global_rng` seeds those generators for such a block
and puts their states back after it.

The generators belong to the whole process, so two threads seeding them at once would draw from
each other's streams, and their restores, run out of order, would leave a seeded state behind.
The block therefore holds one process-wide lock: seeded blocks run one at a time (unseeded code in
other threads that draws from the same generators meanwhile is outside its reach). Nothing inside
a block may wait for a lock another thread holds while it waits for this one: the blocks run
third-party draws and forwards only, never a model lock.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Sequence

import numpy as np
import torch

__all__ = ["seeded_global_rng"]

_GLOBAL_RNG_LOCK = threading.RLock()  # re-entrant: a seeded block may run another


def _cuda_index(device: torch.device) -> int:
    return torch.cuda.current_device() if device.index is None else device.index


@contextlib.contextmanager
def seeded_global_rng(seed: int | None, devices: Sequence[torch.device] = (),
                      numpy: bool = False) -> Iterator[None]:
    """Seed torch's CPU default generator (and the default generators of the CUDA and MPS devices
    among ``devices``; and NumPy's global ``RandomState`` if ``numpy``) with ``seed`` inside the
    block; restore all of them on exit, also on errors. ``seed=None`` leaves the generators
    untouched and takes no lock."""
    if seed is None:
        yield
        return
    devices = [torch.device(d) for d in devices]
    indices = sorted({_cuda_index(d) for d in devices if d.type == "cuda"})
    mps = any(d.type == "mps" for d in devices)
    with _GLOBAL_RNG_LOCK:
        numpy_state = np.random.get_state() if numpy else None
        mps_state = torch.mps.get_rng_state() if mps else None
        try:
            with torch.random.fork_rng(devices=indices):
                torch.random.default_generator.manual_seed(seed)
                for index in indices:  # only these: torch.manual_seed would seed every CUDA device
                    with torch.cuda.device(index):
                        torch.cuda.manual_seed(seed)
                if mps:
                    torch.mps.manual_seed(seed)
                if numpy:
                    np.random.seed(seed)
                yield
        finally:
            if mps_state is not None:
                torch.mps.set_rng_state(mps_state)
            if numpy_state is not None:
                np.random.set_state(numpy_state)
