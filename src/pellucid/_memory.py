"""Keep freed host memory for the next step instead of handing it back to the operating system.

glibc's ``malloc`` serves every block above its mmap threshold (128 KiB, raised on the fly to at
most 32 MiB) with a fresh ``mmap`` and unmaps it on ``free``. A training step allocates and frees
the same large activations every time, so each step pays page faults to get the same memory back,
zeroed by the kernel. At H = 500 the metric cells' ``(B, H, 500)`` activations are 50 MB each,
above any threshold glibc will take: the kernel's share was 22.6 s of 72 s of CPU time for six
steps of two cells, against 1.8 s with the memory kept.

:func:`keep_freed_memory` tells glibc to serve large blocks from its heap too (``M_MMAP_MAX = 0``)
and never to trim the heap (``M_TRIM_THRESHOLD``), the host-memory analogue of PyTorch's CUDA
caching allocator. The price: a process keeps its peak heap until it exits. The values computed
do not change. ``pellucid``'s command line and the benchmarks call it at start; a library import
never does (it changes the whole process). ``PELLUCID_KEEP_FREED_MEMORY=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

__all__ = ["ENV_VAR", "keep_freed_memory"]

ENV_VAR = "PELLUCID_KEEP_FREED_MEMORY"

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """On Linux with glibc: serve large blocks from the heap and keep freed memory for reuse.

    Returns whether the setting was applied: ``False`` on other C libraries and systems, or with
    ``PELLUCID_KEEP_FREED_MEMORY=0`` in the environment.
    """
    if os.environ.get(ENV_VAR, "1").strip() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; the trim threshold is an int, so its largest value. A repeated
    # 64-byte-aligned large request fits a freed block once neighbours have merged: a few steps in.
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
