"""User-facing errors.

Every error a user can cause (bad input, missing data, a broken checkpoint) raises a subclass of
:class:`PellucidError` whose message says what is wrong and how to fix it. The CLI prints that
message on one line and exits non-zero; ``assert`` is kept for internal invariants only.
"""


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
