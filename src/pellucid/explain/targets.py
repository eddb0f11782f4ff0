"""What to explain: a scalar per sample picked from the model's output.

A target is ``None`` (each sample's top output), a class/unit index (``int``, or one per sample), or
any callable ``f(output) -> (B,)`` (a feature unit, a cosine similarity to a reference embedding).
"""

from __future__ import annotations

import reprlib
from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F

from pellucid.errors import InvalidInputError

__all__ = ["Target", "cosine_similarity_target", "resolve_target", "select_target"]

TargetFn = Callable[[torch.Tensor], torch.Tensor]
Target = Union[None, int, Sequence[int], torch.Tensor, TargetFn]


def cosine_similarity_target(reference: torch.Tensor) -> TargetFn:
    """``f(out)_b = <out_b, r> / (|out_b| |r|)``: ascent "morphs" an input toward ``reference``'s output.

    ``reference`` is one output ``(K,)``/``(1, K)`` shared by the batch, or one per sample ``(B, K)``.
    """
    ref = reference.detach()
    ref = ref.reshape(1, -1) if ref.dim() <= 1 or ref.shape[0] == 1 else ref.flatten(1)

    def cosine(out: torch.Tensor) -> torch.Tensor:
        flat = out.flatten(1)
        if flat.shape[1] != ref.shape[1] or ref.shape[0] not in (1, flat.shape[0]):
            raise InvalidInputError(f"cosine target: reference output has shape {tuple(ref.shape)}, "
                                    f"model output {tuple(flat.shape)}; compute the reference with the "
                                    "same model")
        return F.cosine_similarity(flat, ref.to(flat), dim=1)

    cosine.__name__ = "cosine_similarity"
    return cosine


def resolve_target(output: torch.Tensor, target: Target) -> torch.Tensor | TargetFn:
    """Fix a target once (for ``None``: each sample's argmax now), so iterated ascent keeps it."""
    if callable(target):
        return target
    logits = _as_logits(output)
    batch, n_out = logits.shape
    if target is None:
        return logits.argmax(1)
    valid = f"valid targets 0..{n_out - 1}"
    if isinstance(target, int) and not isinstance(target, bool) and not 0 <= target < n_out:
        raise InvalidInputError(f"target {reprlib.repr(target)} is out of range: the model has {n_out} "
                                f"outputs ({valid})")
    try:
        index = torch.as_tensor(target, device=logits.device)
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:  # strings, huge ints, ragged lists
        raise InvalidInputError(f"target must be an integer class/unit index, one per sample, or a "
                                f"function of the output ({valid}); got {reprlib.repr(target)} "
                                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise InvalidInputError(f"target must be an integer class/unit index, got dtype {index.dtype}")
    if index.dim() > 1:
        raise InvalidInputError(f"target has shape {tuple(index.shape)}; pass one index (shape () or "
                                f"(1,)) or one per sample, shape ({batch},)")
    index = index.long().reshape(-1)
    if index.numel() == 1:
        index = index.expand(batch)
    if index.numel() != batch:
        raise InvalidInputError(f"got {index.numel()} targets for a batch of {batch}; pass one target "
                                "or one per sample")
    out_of_range = (index < 0) | (index >= n_out)
    if bool(out_of_range.any()):
        bad = index[out_of_range][0].item()
        raise InvalidInputError(f"target {bad} is out of range: the model has {n_out} outputs "
                                f"({valid})")
    return index


def select_target(output: torch.Tensor, target: torch.Tensor | TargetFn) -> torch.Tensor:
    """The explained scalar per sample, ``(B,)``: ``output[b, target_b]`` or ``target(output)``."""
    if callable(target):
        score = target(output)
        if not isinstance(score, torch.Tensor) or score.shape != (output.shape[0],):
            raise InvalidInputError("a target function must return one scalar per sample, shape "
                                    f"({output.shape[0]},), got "
                                    f"{tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__}")
        return score
    return _as_logits(output).gather(1, target.view(-1, 1)).squeeze(1)


def _as_logits(output: torch.Tensor) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise InvalidInputError(f"the model returned {type(output).__name__}, not a tensor; call "
                                "model.eval() (train-mode Inception/GoogLeNet return tuples) or pass "
                                "a target function that picks the output")
    if output.dim() < 2:
        raise InvalidInputError(f"the model output has shape {tuple(output.shape)}; expected (B, K)")
    return output.flatten(1)
