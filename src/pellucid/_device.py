"""Which device a command computes on: ``--device auto|cpu|cuda|cuda:N|mps``.

Every command that computes resolves its ``--device`` here once, before loading data or weights,
so that a device the machine lacks is a one-line error (:class:`~pellucid.errors.InvalidInputError`)
and not a CUDA traceback an hour into an evaluation. ``auto`` prefers CUDA, then Apple's MPS,
then the CPU.
"""

from __future__ import annotations

import re

import torch

from pellucid.errors import InvalidInputError

__all__ = ["DEVICE_CHOICES", "device_name", "draw_device", "resolve_device"]

# what --device accepts, for help texts and error messages ("cuda:N" stands for an index)
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")

_CUDA = re.compile(r"^cuda(?::(\d+))?$")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(spec: str = "auto") -> torch.device:
    """The :class:`torch.device` that ``spec`` names, checked to exist on this host.

    ``spec``: ``"auto"`` (CUDA if available, else MPS if available, else CPU), ``"cpu"``,
    ``"cuda"`` (the current CUDA device), ``"cuda:N"`` or ``"mps"``. Raises
    :class:`InvalidInputError` with the fix for an unknown name or a device that is not present.
    """
    text = str(spec).strip().lower() if spec is not None else "auto"
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise InvalidInputError("--device mps: Apple's MPS backend is not available here; use "
                                    "--device cpu (or auto)")
        return torch.device("mps")
    match = _CUDA.match(text)
    if match is None:
        raise InvalidInputError(f"unknown device {spec!r}; use one of {', '.join(DEVICE_CHOICES)}")
    if not torch.cuda.is_available():
        raise InvalidInputError(f"--device {text}: CUDA is not available (no GPU, or a torch build "
                                "without CUDA); use --device cpu (or auto)")
    count = torch.cuda.device_count()
    index = torch.cuda.current_device() if match.group(1) is None else int(match.group(1))
    if index >= count:
        raise InvalidInputError(f"--device {text}: there {'is' if count == 1 else 'are'} {count} CUDA "
                                f"device{'' if count == 1 else 's'} (cuda:0 to cuda:{count - 1})")
    return torch.device("cuda", index)


def device_name(device: torch.device) -> str:
    """How records and JSON output name ``device``: ``"cpu"``, ``"cuda:0"``, ``"mps"``."""
    device = torch.device(device)
    return device.type if device.index is None else f"{device.type}:{device.index}"


def draw_device(generator: torch.Generator | None) -> torch.device:
    """Where random draws from ``generator`` happen: its own device, or the CPU for the global RNG.

    Every random draw in pellucid names this device explicitly and then moves the numbers to the
    data's device, so that a default device set by the caller (``torch.set_default_device("cuda")``)
    neither breaks a draw from a CPU generator nor changes which numbers are drawn: a seeded
    evaluation draws the same numbers on every device.
    """
    return generator.device if generator is not None else torch.device("cpu")
