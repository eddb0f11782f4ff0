"""User-facing errors, and :class:`Stopped` (work stopped on a signal, what it had done kept).

Every error a user can cause (bad input, missing data, a broken checkpoint) raises a subclass of
:class:`PellucidError` whose message says what is wrong and how to fix it. The CLI prints that
message on one line and exits non-zero; ``assert`` is kept for internal invariants only.
"""

from __future__ import annotations


class PellucidError(Exception):
    """Base class of every error caused by the user's input or environment."""


class DataNotFoundError(PellucidError):
    """No source could provide the requested dataset."""


class DataFormatError(DataNotFoundError):
    """A data file exists but cannot be used: corrupt, wrong dtype, labels outside the classes."""


class InvalidInputError(PellucidError, ValueError):
    """Input tensors have the wrong shape, range or contain NaN/inf."""


class InputTypeError(InvalidInputError, TypeError):
    """An input has the wrong type or dtype (e.g. float64 images for a float32 model)."""


class ConfigError(InvalidInputError):
    """A configuration (file or dict) has an unknown field or a value of the wrong type."""


class CheckpointError(PellucidError):
    """A model directory is missing, corrupted or does not match the model."""


class UnknownNameError(PellucidError, KeyError):
    """A name is not in a registry (model, attack, recipe, ...)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Stopped(KeyboardInterrupt):
    """Work stopped on a signal (Ctrl-C, ``kill``) at a point where what it had done was kept.

    ``signum`` says which signal (the CLI exits with ``128 + signum``), ``str()`` what was kept
    (may be empty), ``finished`` that the work itself was done when it could stop (its caller,
    with more to do, stops instead). A ``KeyboardInterrupt``, so that code which catches Ctrl-C
    catches it too; not a :class:`PellucidError`: nothing was wrong."""

    def __init__(self, signum: int, kept: str = "", finished: bool = False) -> None:
        super().__init__(kept)
        self.signum, self.finished = signum, finished

    def continued_by(self, how: str) -> Stopped:
        """The same stop, its text ending with how the caller's user continues the work."""
        return Stopped(self.signum, f"{self}; {how}" if str(self) else "", self.finished)
