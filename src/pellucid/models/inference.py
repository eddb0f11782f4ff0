"""Batched inference shared by training, robustness evaluation and attacks: logits and margins.

One implementation of "run the model over a large batch in chunks, without gradients" that the
trainer's validation, the evaluators and the black-box attacks all use, so they agree on eval
mode, input checks and batching. It lives below :mod:`pellucid.robust` and :mod:`pellucid.train`
so that both can import it without importing each other.
"""

from __future__ import annotations

import contextlib
import numbers
from typing import Iterator

import torch
from torch import nn

from pellucid.data.validation import check_model_input
from pellucid.errors import InvalidInputError
from pellucid.nn.conv_gradients import direct_conv_input_gradients


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode; restore each submodule's previous mode on exit, even on errors."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """How attacks, checks and diagnostics hold a model: :func:`eval_mode`, and on the CPU the
    input gradients of its few-channel convolutions through ATen's direct kernel
    (:func:`pellucid.nn.conv_gradients.direct_conv_input_gradients`: the same forward, the
    same gradient up to float rounding, several times faster); both undone on exit."""
    with eval_mode(model), direct_conv_input_gradients(model):
        yield model


@torch.no_grad()
def batched_logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``model(x)`` without gradients in chunks of ``batch_size``, in the model's current mode and
    unchecked: the inner loop of :func:`predict_logits`, for callers that already hold the model
    in eval mode and checked ``x`` (an attack querying the model many times)."""
    return torch.cat([model(xb) for xb in x.split(batch_size)])


def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """``model(x)`` in eval mode, in batches of ``batch_size``; ``x`` must have the model's dtype."""
    check_model_input(model, x)
    if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be an int >= 1, got {batch_size!r}")
    with eval_mode(model):
        return batched_logits(model, x, batch_size)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{j != y} z_j`` per row (negative: misclassified; 0: a tie)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return true - other


def predict_margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    batch_size: int = 1024) -> torch.Tensor:
    """:func:`margin` of :func:`predict_logits`, with ties settled by the argmax: ``> 0`` exactly
    where the model's prediction (``argmax``) is ``y``, ``<= 0`` elsewhere."""
    logits = predict_logits(model, x, batch_size)
    m = margin(logits, y)
    return torch.where(logits.argmax(1) == y, m.clamp_min(torch.finfo(m.dtype).tiny), m.clamp_max(0))


def window_index(top: torch.Tensor, left: torch.Tensor, side: int, n: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices ``(k, side, 1)`` and ``(k, 1, side)`` of one ``side x side`` window
    per image, its top-left corner at ``(top[i], left[i])``; ``n`` (default ``side``) widens it."""
    offsets = torch.arange(side if n is None else n, device=top.device)
    return (top.reshape(-1, 1) + offsets)[:, :, None], (left.reshape(-1, 1) + offsets)[:, None, :]


class WindowQueries:
    """Score queries whose candidates differ from the current images only inside one square window
    per image (the Square attack's proposals), for any model: each candidate is built in full and
    sent through the model.

    ``images`` ``(n, C, H, W)`` are the current points (updated in place by :meth:`accept`).
    :meth:`query` scores ``images[rows]`` with window ``i`` (``(k, C, s, s)``, top-left corner
    ``(top[i], left[i])``) pasted in; :meth:`accept` keeps the last query's windows where ``keep``.
    Models with a cheaper way to score a local change implement ``window_queries(images,
    batch_size)`` returning a subclass (e.g. :class:`~pellucid.models.whitebox.WhiteBoxNet`).
    The caller holds the model in eval mode and gradients off.
    """

    def __init__(self, model: nn.Module, images: torch.Tensor, batch_size: int) -> None:
        self.model, self.images, self.batch_size = model, images, batch_size
        self._last: tuple[torch.Tensor, ...] | None = None

    def set(self, rows: torch.Tensor, images: torch.Tensor) -> None:
        """Replace ``images[rows]`` as a whole (e.g. a restart's new starting points)."""
        self.images[rows] = images

    def _paste(self, base: torch.Tensor, top, left, window) -> torch.Tensor:
        k, c, s = window.shape[:3]
        r, col = window_index(top, left, s)
        base[torch.arange(k, device=base.device)[:, None, None, None],
             torch.arange(c, device=base.device)[None, :, None, None], r[:, None], col[:, None]] = window
        return base

    def query(self, rows: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
              window: torch.Tensor) -> torch.Tensor:
        """Logits of the ``len(rows)`` candidates."""
        self._last = (rows, top, left, window)
        return batched_logits(self.model, self._paste(self.images[rows], top, left, window), self.batch_size)

    def accept(self, keep: torch.Tensor) -> None:
        """Make the last query's candidates where ``keep`` (bool, one per queried row) current."""
        rows, top, left, window = (t[keep] for t in self._last)
        self.images[rows] = self._paste(self.images[rows], top, left, window)
