"""Several processes on one job, launched by ``torchrun``: the process group and what the
commands exchange through it.

``torchrun --nproc-per-node W -m pellucid evaluate DIR ...`` starts ``W`` copies of the command
with ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their
environment. :func:`start_job` turns that environment into a :class:`Job`: it joins the process
group (gloo on CPU and MPS, where tensors travel through host memory; NCCL on CUDA, one GPU per
process, ``cuda:LOCAL_RANK`` unless ``--device cuda:N`` pins one) and leaves it on exit. Without
``WORLD_SIZE > 1`` the job is the single process itself and nothing is initialised, so every
command runs unchanged.

A process that fails makes ``torchrun`` stop the others. Under another launcher, a process
waits at most ``PELLUCID_DIST_TIMEOUT`` seconds (default 3600) for the others at any exchange,
then fails with a one-line error instead of waiting forever.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from pellucid._device import resolve_device
from pellucid.errors import InvalidInputError, PellucidError

__all__ = ["DistributedError", "Job", "launched", "start_job"]

TIMEOUT_ENV = "PELLUCID_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 3600
_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(PellucidError):
    """Another process of the job failed, or did not reach an exchange within the timeout."""


def launched() -> bool:
    """Whether this process is one of several (``WORLD_SIZE > 1``, as ``torchrun`` sets)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return True  # a malformed value is reported by start_job


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name}={value!r} in the environment is not an integer; launch the "
                                "processes with torchrun (it sets RANK, LOCAL_RANK and WORLD_SIZE)") from None


def _timeout() -> datetime.timedelta:
    text = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise InvalidInputError(f"{TIMEOUT_ENV}={text!r}: give the seconds a process waits for the "
                                "others, a number > 0")
    return datetime.timedelta(seconds=seconds)


def _rank_device(spec: str, local_rank: int) -> torch.device:
    """The device of the process with ``local_rank``: ``--device cuda`` or ``auto`` on a CUDA
    host gives each process of a node its own GPU; an explicit ``cuda:N`` is taken as given."""
    device = resolve_device(spec)
    if device.type == "cuda" and str(spec).strip().lower() in ("auto", "cuda"):
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise InvalidInputError(f"process {local_rank} of this node has no GPU of its own: there "
                                    f"{'is' if count == 1 else 'are'} {count}; start at most {count} "
                                    "processes per node (--nproc-per-node)")
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL and ART use the current device
    return device


@dataclass(frozen=True)
class Job:
    """This process's place in the job: ``rank`` of ``world_size`` processes, its ``device`` and
    the process group's ``backend`` (``None`` for a single process).

    Every exchange is a no-op for a single process, so code written for a job runs unchanged
    without ``torchrun``.
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints and writes."""
        return self.rank == 0

    def share(self, n_items: int) -> list[int]:
        """The indices of ``n_items`` (e.g. chunks of images) this process takes:
        ``rank, rank + world_size, ...``, so that every item has exactly one owner."""
        return list(range(self.rank, n_items, self.world_size))

    @property
    def _wire(self) -> torch.device:
        """Where tensors travel from: the GPU for NCCL, host memory for gloo."""
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def _exchange(self, what: str, op):
        try:
            return op()
        except RuntimeError as e:  # DistBackendError and gloo's timeouts are RuntimeErrors
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DistributedError(f"process {self.rank} of {self.world_size}: {what} failed ({first}); "
                                   "another process failed or did not get there within "
                                   f"{TIMEOUT_ENV} seconds") from None

    def all_gather_rows(self, rows: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
        """Every process's ``rows`` (``counts[r]`` rows on rank ``r``; the other dimensions the same
        everywhere), in rank order, on this process's device. Tensors travel padded to the
        largest count: gloo through host memory, NCCL on the GPU."""
        if self.world_size == 1:
            return [rows]
        import torch.distributed as dist

        assert len(rows) == counts[self.rank], (len(rows), counts, self.rank)
        wire = self._wire
        dtype = torch.uint8 if rows.dtype == torch.bool else rows.dtype  # gloo has no bool
        send = torch.zeros((max(counts), *rows.shape[1:]), dtype=dtype, device=wire)
        send[:len(rows)] = rows.to(wire, dtype)
        out = [torch.empty_like(send) for _ in range(self.world_size)]
        self._exchange("gathering results", lambda: dist.all_gather(out, send))
        return [o[:c].to(rows.device, rows.dtype) for o, c in zip(out, counts)]

    def all_gather_objects(self, obj: Any) -> list[Any]:
        """Every process's ``obj`` (small, picklable: log rows, counts), in rank order."""
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        self._exchange("gathering results", lambda: dist.all_gather_object(out, obj))
        return out

    def all_reduce_sum_(self, tensors: list[torch.Tensor]) -> None:
        """Replace each tensor by its sum over the processes, in place (one exchange for all:
        they travel as one flat buffer of the first tensor's dtype)."""
        if self.world_size == 1 or not tensors:
            return
        import torch.distributed as dist

        flat = torch.cat([t.detach().reshape(-1).to(self._wire, tensors[0].dtype) for t in tensors])
        self._exchange("summing over the processes", lambda: dist.all_reduce(flat))
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite each tensor, in place, with process 0's."""
        if self.world_size == 1:
            return
        import torch.distributed as dist

        for t in tensors:
            buffer = t.detach().to(self._wire)
            self._exchange("receiving from process 0", lambda: dist.broadcast(buffer, src=0))
            t.copy_(buffer)

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.world_size == 1:
            return
        import torch.distributed as dist

        self._exchange("waiting for the other processes", dist.barrier)


@contextlib.contextmanager
def start_job(device: str = "auto") -> Iterator[Job]:
    """The :class:`Job` of this process on ``device`` (``--device``'s value); with
    ``WORLD_SIZE > 1`` it joins the process group for the duration and leaves it on exit, even
    on errors. Bad launch settings (a device the host lacks, a malformed environment) raise
    :class:`InvalidInputError` on every process before anything is exchanged."""
    if not launched():
        yield Job(device=resolve_device(device))
        return
    import torch.distributed as dist

    missing = [name for name in _ENV if name not in os.environ]
    if missing:
        raise InvalidInputError(f"WORLD_SIZE > 1 but {', '.join(missing)} not set; launch the "
                                "processes with torchrun")
    rank, world, local_rank = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    if not 0 <= rank < world:
        raise InvalidInputError(f"RANK={rank} is outside 0..WORLD_SIZE-1 ({world - 1})")
    timeout = _timeout()
    here = _rank_device(device, local_rank)
    backend = "nccl" if here.type == "cuda" else "gloo"
    if not dist.is_available():
        raise InvalidInputError("this torch build has no torch.distributed; run one process")
    try:
        dist.init_process_group(backend, timeout=timeout, rank=rank, world_size=world,
                                **({"device_id": here} if backend == "nccl" else {}))
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistributedError(f"process {rank} of {world} could not join the job ({first})") from None
    try:
        yield Job(rank, world, here, backend)
    finally:
        dist.destroy_process_group()
