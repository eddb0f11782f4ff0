"""Run-directory I/O that never loses data: atomic, durable writes and a lock per run directory.

* :func:`save_json_atomic`, :func:`save_tensors_atomic`, :func:`save_bytes_atomic` write through a
  temporary file in the target's directory, ``fsync`` it, rename it over the target and ``fsync``
  the directory: after a crash (``kill -9``, power loss) the target holds either its old or its new
  content, never a mix. Temporary files are named ``.NAME.PID.RANDOM.tmp``; one left behind by a
  process that died mid-write is removed by the next write to the same directory.
* :class:`RunLock` makes one process at a time write a run directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors.torch import save as safetensors_bytes

from pellucid.errors import PellucidError

LOCK_FILE = ".pellucid.lock"
_TEMP = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")  # .NAME.PID.RANDOM.tmp
# safetensors' save_file (0.6+) writes through .tmpXXXXXX beside the target; versions of pellucid
# that called it could leave one behind when killed mid-write
_SAFETENSORS_TEMP = re.compile(r"^\.tmp[A-Za-z0-9]{6}$")


class RunDirectoryBusyError(PellucidError):
    """Another live process holds the run directory's lock."""


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this host)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return False
    return True


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_files(directory: Path, orphaned: Callable[[os.DirEntry], bool]) -> list[Path]:
    """Delete the regular files of ``directory`` for which ``orphaned(entry)`` holds."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        if entry.is_file(follow_symlinks=False) and orphaned(entry):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def remove_orphan_temps(directory: Path) -> list[Path]:
    """Delete temporary files of :func:`_atomic_write` whose writing process no longer runs."""
    def orphaned(entry: os.DirEntry) -> bool:
        m = _TEMP.match(entry.name)
        return bool(m) and not pid_alive(int(m.group(1)))

    return _remove_files(directory, orphaned)


def _is_safetensors_prefix(path: str) -> bool:
    """Whether the file at ``path`` could be a safetensors file cut short: fewer than 8 bytes (a
    kill before its header length was written whole), or an 8-byte little-endian header length
    below 100 MB, then the header's opening ``{``."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 8:
        return True
    size = int.from_bytes(head[:8], "little")
    return 0 < size < 100_000_000 and head[8:9] in (b"", b"{")


def remove_orphan_safetensors_temps(directory: Path) -> list[Path]:
    """Delete the temporary files safetensors' ``save_file`` left in run directory ``directory``.

    Only called with the directory's :class:`RunLock` held: every pellucid version writes a run
    directory under that lock, so no live process is writing such a file. A file is removed only
    if its name is ``.tmp`` + 6 letters or digits and its content is empty or starts like a
    safetensors file; anything else is left alone.
    """
    return _remove_files(directory, lambda e: bool(_SAFETENSORS_TEMP.match(e.name))
                         and _is_safetensors_prefix(e.path))


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """Hex SHA-256 of named tensors: names, dtypes, shapes and bytes, in name order.

    Identifies weights by what they are: the bytes of a safetensors file are not (its header's
    metadata order varies from process to process).
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def weights_sha256(path: Path | str) -> str | None:
    """:func:`tensors_sha256` of a safetensors file, or None if it cannot be read."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return tensors_sha256(load_file(str(path)))
    except (OSError, SafetensorError, ValueError):
        return None


def check_writable_dir(directory: Path | str, what: str) -> None:
    """Raise :class:`PellucidError` unless ``directory`` is, or can be created as, a directory this
    process can write. ``what`` starts the message (e.g. ``"--out"``). Missing folders are not
    created here; a probe file in the nearest existing one is created and removed at once
    (permissions can say yes where a read-only mount says no)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise PellucidError(f"{what} {directory} is a file, not a directory")
    existing = directory.absolute()
    while not existing.exists() and existing != existing.parent:  # the rest will be created
        existing = existing.parent
    if not existing.is_dir():
        raise PellucidError(f"{what} {directory}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PellucidError(f"{what} {directory}: {existing} is not writable (permissions)")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".pellucid-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PellucidError(f"{what} {directory}: {existing} is not writable ({e.strerror})") from None


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` a temporary file beside ``path``, fsync it, rename it over ``path``, fsync
    the directory. An exception removes the temporary file and leaves ``path`` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphan_temps(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        with open(tmp, "rb+") as f:  # the data reaches the disk before the rename publishes it
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


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
    # Serialised in memory and written by us: safetensors' save_file (0.6+) writes through a
    # temporary file of its own (.tmpXXXXXX) beside the target, which a kill -9 leaves behind
    # under a name no process can be matched to.
    save_bytes_atomic(path, safetensors_bytes(flat, metadata=dict(metadata or {})))


def save_bytes_atomic(path: Path | str, data: bytes) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    _atomic_write(Path(path), write)


class RunLock:
    """Exclusive right to write run directory ``directory`` (a context manager).

    The lock is ``DIR/.pellucid.lock``, held with ``flock`` (the kernel releases it when the holder
    dies, even by ``kill -9``) and holding the holder's pid and command. A second process is
    refused at once with :class:`RunDirectoryBusyError` naming that pid. A lock file still holding
    a pid when the lock is free was left by a process that died: it is taken over with a message
    on stderr. Taking the lock also removes the ``.tmpXXXXXX`` files safetensors' ``save_file``
    left there (:func:`remove_orphan_safetensors_temps`). Releasing empties the file rather than
    deleting it, so that two processes can never hold locks on two different files of the same name.

    Re-entrant within one process (a command that trains, then evaluates, holds it once).
    """

    # resolved directory -> nesting depth in this process: mirrors the flocks this process holds
    # (a second flock on a new descriptor would block against our own)
    _held: dict[str, int] = {}
    _held_guard = threading.Lock()

    def __init__(self, directory: Path | str, what: str = "") -> None:
        self.directory = Path(directory)
        self.what = what or " ".join(sys.argv[:3])
        self._fd: int | None = None
        self._key = ""

    def __enter__(self) -> "RunLock":
        self.directory.mkdir(parents=True, exist_ok=True)
        self._key = str(self.directory.resolve())
        with self._held_guard:
            if self._held.get(self._key):
                self._held[self._key] += 1
                return self
            self._acquire()
            self._held[self._key] = 1
        return self

    def _acquire(self) -> None:
        path = self.directory / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _try_lock(fd):
                previous = _wait_for_holder(fd)
                holder = f"pid {previous['pid']} ({previous.get('command', '?')})" if previous else "another process"
                raise RunDirectoryBusyError(f"{self.directory} is in use by {holder}; wait for it to "
                                            "finish or use another directory")
            previous = _read_holder(fd)  # under the lock: whatever is left was written by a dead holder
            if previous and previous.get("pid") != os.getpid():
                print(f"pellucid: taking over the lock of {self.directory} left by pid "
                      f"{previous.get('pid')} ({previous.get('command', '?')}), which is no longer "
                      "running", file=sys.stderr)
            orphans = remove_orphan_safetensors_temps(self.directory)
            if orphans:
                print(f"pellucid: removed {len(orphans)} unfinished temporary file(s) from "
                      f"{self.directory}: {', '.join(sorted(p.name for p in orphans))}", file=sys.stderr)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": self.what}).encode() + b"\n", 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def __exit__(self, *exc: object) -> None:
        with self._held_guard:
            self._held[self._key] -= 1
            if self._held[self._key] or self._fd is None:
                return
            del self._held[self._key]
            self._release()

    def _release(self) -> None:
        try:
            os.ftruncate(self._fd, 0)  # a clean release: no pid left for a "stale lock" message
        finally:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def _wait_for_holder(fd: int, timeout: float = 2.0) -> dict | None:
    """The holder's pid record, waiting briefly for it: a holder writes it just after taking the
    flock, so a process refused in between would otherwise see an empty file."""
    deadline = time.monotonic() + timeout
    while True:
        holder = _read_holder(fd)
        if holder or time.monotonic() >= deadline:
            return holder
        time.sleep(0.02)


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows: msvcrt locks a byte range the same way
        import msvcrt
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _read_holder(fd: int) -> dict | None:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"null")
        return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None
    except (ValueError, OSError):
        return None

