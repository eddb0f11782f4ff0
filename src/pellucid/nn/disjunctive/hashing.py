r"""Incremental Neural Hashing (INH): a growing set of slots, each a high-precision detector.

A slot ``s`` holds a key ``w_s`` (in the similarity's embedded space), a threshold ``t_s`` and a
class ``c_s``. With an input ``x`` (flattened to ``D`` features):

* match: ``m_s(x) = sim(x, w_s)``, one of

  - ``"centred-cosine"`` (default): ``m_s(x) = <x^, w_s>`` with ``x^ = (x - mean(x)) /
    ||x - mean(x)||_2`` (the mean over the input's own features; keys are such unit vectors too);
  - ``"cosine"``: the same without centring, ``x^ = x / ||x||_2``;
  - ``"l2"``: ``m_s(x) = -||x - w_s||_2`` on the raw features;

* slot ``s`` fires when ``m_s(x) >= t_s``;
* class score (a disjunction, OR, of the class's slots): ``y_k(x) = max_{s: c_s = k} (m_s(x) -
  t_s)``; the prediction is ``argmax_k y_k(x)``, so an input no slot fires for still gets the
  class of its best margin. A class without slots scores the dtype's lowest finite value (outputs
  stay finite, and such a class is never predicted over one that has slots).

Fit (:func:`fit_inh`), greedy and incremental, in passes over the training set in batches ``B``:

1. threshold of every slot from the batch: the lowest value with 100 % precision on it,
   ``t_s(B) = max_{i in B, y_i != c_s} m_s(x_i) + epsilon``; by default the slot keeps the running
   maximum ``t_s <- max(t_s, t_s(B))``, so it has 100 % precision on every batch it has seen
   (``threshold_mode="batch"``: each batch uses its own ``t_s(B)``, see :func:`fit_inh`);
2. candidates: inputs of the batch that no slot of their class fires for;
3. coverage (:func:`candidate_coverage`): candidate ``i`` as a key, with threshold ``t_i`` from
   step 1 against all inputs of the batch of other classes, covers candidate ``j`` iff ``y_j =
   y_i`` and ``m(x_i, x_j) > t_i``: a boolean ``C x C`` matrix;
4. new slots: greedy set cover of the candidates (:func:`greedy_set_cover`): repeatedly the
   candidate covering most still-uncovered candidates (lowest index on ties);
5. the chosen candidates become slots (key ``x_i^``, threshold ``t_i``, class ``y_i``).

Passes end when one adds no slot and raises no threshold (then every training input is fired by
a slot of its class and by no other slot, so all are classified correctly) or after
``max_passes``. In the worst case every training input becomes a slot (memorisation).
:func:`prune_inh` then keeps the slots of a greedy set cover of the training set by the slots
(the slots added early, before their thresholds were raised, are often covered by later ones).

Gradient stage (:func:`tune_inh`, classifiers only): after the fit, the keys and thresholds are
trained by gradient descent on the cross-entropy of the soft OR of each class's slots, the slots
keeping their number and classes. A permissive greedy fit (``threshold_mode="batch"``, small
batches: few slots) followed by this stage compresses far more than a precision-1 fit alone.

Unsupervised variant (no labels; the slots are hash codes, :meth:`IncrementalNeuralHashing.hash`):
a slot may match at most ``X %`` of a batch, so step 1 sets ``t_s(B) = v_{k+1} + epsilon`` with
``v_1 >= v_2 >= ...`` the slot's matches on the batch and ``k = floor(X n / 100)`` (``n`` the
batch size); candidates are inputs no slot fires for; ``i`` covers ``j`` iff ``m(x_i, x_j) >
t_i`` with ``t_i`` that quantile of key ``i`` over the whole batch.
"""

from __future__ import annotations

import math
import numbers
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from pellucid._device import draw_device
from pellucid.errors import InvalidInputError

__all__ = ["IncrementalNeuralHashing", "SIMILARITIES", "THRESHOLD_MODES", "candidate_coverage",
           "coverage_matrix", "fit_inh", "greedy_set_cover", "precision_thresholds", "prune_inh",
           "quantile_thresholds", "tune_inh"]

SIMILARITIES = ("centred-cosine", "cosine", "l2")
THRESHOLD_MODES = ("max", "batch")


def _floor(dtype: torch.dtype) -> float:
    """The lowest finite value of ``dtype``: a threshold that fires on everything, a class score
    that never wins; finite, so weights and outputs stay saveable and checkable."""
    return torch.finfo(dtype).min


# -- the fit's math, each step a few tensor operations ---------------------------------------------

def precision_thresholds(match: torch.Tensor, labels: torch.Tensor, slot_classes: torch.Tensor,
                         eps: float) -> torch.Tensor:
    r"""Lowest thresholds with 100 % precision on a batch: ``t_s = max_{i: y_i != c_s} m_{is} +
    eps`` for ``match`` ``(n, S)``, ``labels`` ``(n,)`` and ``slot_classes`` ``(S,)``; a slot with
    no input of another class in the batch gets the dtype's lowest finite value (fires on all)."""
    other = labels[:, None] != slot_classes[None, :]
    floor = _floor(match.dtype)
    worst = torch.where(other, match, torch.full_like(match, floor)).amax(0) if len(match) else \
        match.new_full((match.shape[1],), floor)
    return torch.where(other.any(0), worst + eps, worst)


def quantile_thresholds(match: torch.Tensor, percent: float, eps: float) -> torch.Tensor:
    r"""Lowest thresholds with which each slot fires for at most ``percent`` % of the batch:
    ``t_s = v_{k+1} + eps``, ``v_1 >= v_2 >= ...`` the column ``s`` of ``match`` ``(n, S)`` sorted,
    ``k = floor(percent n / 100)``; ``k = n`` (all may fire): the dtype's lowest finite value."""
    n = match.shape[0]
    k = math.floor(percent * n / 100 + 1e-9)  # 1e-9: 10 % of 30 is 3, not 2.9999
    if k >= n:
        return match.new_full((match.shape[1],), _floor(match.dtype))
    return torch.topk(match, k + 1, dim=0).values[k] + eps


def coverage_matrix(key_match: torch.Tensor, key_thresholds: torch.Tensor,
                    same_class: torch.Tensor | None = None) -> torch.Tensor:
    r"""``A[i, j] = m(x_i, x_j) > t_i`` (and ``y_i = y_j`` where ``same_class`` is given) for the
    candidates' matches among themselves ``key_match`` ``(C, C)``: ``i`` as a slot covers ``j``."""
    cover = key_match > key_thresholds[:, None]
    return cover & same_class if same_class is not None else cover


def greedy_set_cover(cover: torch.Tensor) -> torch.Tensor:
    r"""Greedy set cover of boolean ``cover`` ``(C, E)`` (row ``i``: the elements set ``i`` covers):
    the indices of the chosen sets, in the order chosen.

    With ``U`` the still-uncovered elements (at first all), each step takes ``i* = min{i : |A_i ∩
    U| = max_j |A_j ∩ U|}`` (the lowest index among the sets covering most uncovered elements) and
    removes ``A_i*`` from ``U``; it stops when no set covers an uncovered element. The gains
    ``|A_i ∩ U|`` are kept as a vector and lowered by the elements just covered, so all steps
    together cost ``O(C E)``; the Python loop runs once per chosen set, never per candidate.
    """
    if cover.dim() != 2 or cover.dtype != torch.bool:
        raise InvalidInputError(f"cover must be a 2-D bool tensor (sets, elements), got "
                                f"{tuple(cover.shape)} {cover.dtype}")
    gain = cover.sum(1)  # |A_i ∩ U| with U = all elements
    by_element = cover.T.contiguous()  # row j: the sets covering element j (a cheap row gather)
    uncovered = torch.ones(cover.shape[1], dtype=torch.bool, device=cover.device)
    chosen = []
    while gain.numel():
        best = int(gain.argmax())  # argmax returns the first maximum: lowest index on ties
        if int(gain[best]) == 0:
            break
        newly = torch.nonzero(cover[best] & uncovered).squeeze(1)
        uncovered[newly] = False
        gain -= by_element[newly].sum(0)  # each set loses the elements it shared with the new one
        chosen.append(best)
    return torch.tensor(chosen, dtype=torch.long, device=cover.device)


# -- the layer -----------------------------------------------------------------------------------

class IncrementalNeuralHashing(nn.Module):
    r"""A growing set of slots (keys ``w_s``, thresholds ``t_s``, classes ``c_s``); see the module
    docstring for the match ``m_s(x)`` and the fit.

    ``n_classes`` ``K``: ``forward`` returns the class scores ``y_k(x) = max_{s: c_s = k} (m_s(x) -
    t_s)`` ``(N, K)``. ``n_classes=None``: an unsupervised hash layer; ``forward`` returns the slot
    margins ``m_s(x) - t_s`` ``(N, S)`` and :meth:`hash` the best slot. ``n_slots`` sizes an empty
    layer for loading saved weights (a fit sets it). Inputs ``(N, ...)`` are flattened to ``(N,
    in_features)``.
    """

    def __init__(self, in_features: int, n_classes: int | None = None, n_slots: int = 0,
                 similarity: str = "centred-cosine") -> None:
        super().__init__()
        for value, name, low in ((in_features, "in_features", 1), (n_slots, "n_slots", 0)) + (
                ((n_classes, "n_classes", 1),) if n_classes is not None else ()):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise InvalidInputError(f"{name} must be an integer >= {low}, got {value!r}")
        if similarity not in SIMILARITIES:
            raise InvalidInputError(f"similarity must be one of {', '.join(SIMILARITIES)}, got "
                                    f"{similarity!r}")
        self.in_features, self.n_classes, self.similarity = int(in_features), n_classes, similarity
        # keys are a parameter so slots can also be tuned by gradient; the fit sets them directly
        self.keys = nn.Parameter(torch.zeros(n_slots, in_features))
        self.register_buffer("thresholds", torch.full((n_slots,), _floor(torch.float32)))
        self.register_buffer("slot_classes", torch.full((n_slots,), -1, dtype=torch.long))

    @property
    def n_slots(self) -> int:
        return int(self.keys.shape[0])

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, n_classes={self.n_classes}, "
                f"n_slots={self.n_slots}, similarity={self.similarity!r}")

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1 or \
                (len(x) and x[0].numel() != self.in_features):
            raise InvalidInputError(f"input must be a float tensor (N, ...) with {self.in_features} "
                                    f"features per row, got {_describe(x)}")
        return x.reshape(len(x), self.in_features)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        r"""``x`` in the space of the keys: ``x^`` (centred and/or unit norm) for the cosines,
        the flattened ``x`` for ``l2``."""
        z = self._flat(x)
        if self.similarity == "centred-cosine":
            z = z - z.mean(1, keepdim=True)
        # F.normalize: a constant (zero after centring) input becomes 0, matching every key with 0
        return F.normalize(z, dim=1) if self.similarity != "l2" else z

    def similarity_of(self, z: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        r"""``m(z_i, k_s)`` ``(N, S)`` for embedded inputs ``z`` and keys ``k`` (both embedded)."""
        if self.similarity != "l2":
            return z @ keys.T
        # ||z - k||^2 by expansion (one matmul); clamped because rounding can make it slightly < 0
        sq = (z * z).sum(1, keepdim=True) - 2 * z @ keys.T + (keys * keys).sum(1)[None, :]
        return -sq.clamp_min(0).sqrt()

    def match(self, x: torch.Tensor) -> torch.Tensor:
        r"""``m_s(x)`` ``(N, S)``."""
        return self.similarity_of(self.embed(x), self.keys)

    def margins(self, x: torch.Tensor) -> torch.Tensor:
        r"""``m_s(x) - t_s`` ``(N, S)``: ``>= 0`` where slot ``s`` fires."""
        return self.match(x) - self.thresholds

    def fires(self, x: torch.Tensor) -> torch.Tensor:
        r"""``m_s(x) >= t_s`` ``(N, S)`` bool."""
        return self.margins(x) >= 0

    def class_scores(self, margins: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        r"""The OR of each class's slots ``(N, K)``: ``y_k = max_{s: c_s = k} margins_s``, or with a
        ``temperature`` ``tau`` the soft OR ``y_k = tau log sum_{s: c_s = k} exp(margins_s / tau)``
        (differentiable in every slot of the class; ``y_k -> max`` as ``tau -> 0``, and ``max <=
        y_k <= max + tau log S_k`` with ``S_k`` the class's slots). A class without slots scores the
        dtype's lowest finite value."""
        if self.n_classes is None:
            raise InvalidInputError("class scores need a layer with n_classes; this one is an "
                                    "unsupervised hash (use margins or hash)")
        out = margins.new_full((len(margins), self.n_classes), _floor(margins.dtype))
        index = self.slot_classes[None, :].expand(len(margins), -1)
        hard = out.scatter_reduce(1, index, margins, "amax", include_self=True)
        if temperature is None:
            return hard
        # log-sum-exp per class around its max (no overflow); the max is a constant shift of the
        # log-sum-exp, so its gradient need not flow through it
        shift = hard.detach()
        terms = ((margins - shift.gather(1, index)) / temperature).exp()
        total = torch.zeros_like(hard).scatter_add(1, index, terms)
        has_slots = total > 0
        return torch.where(has_slots, shift + temperature * total.clamp_min(1e-30).log(), hard)

    def hash(self, x: torch.Tensor) -> torch.Tensor:
        r"""The hash code of each input: ``argmax_s (m_s(x) - t_s)`` ``(N,)``."""
        if self.n_slots == 0:
            raise InvalidInputError("the layer has no slots yet; fit it first (fit_inh)")
        return self.margins(x).argmax(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        margins = self.margins(x)
        return margins if self.n_classes is None else self.class_scores(margins)

    @torch.no_grad()
    def add_slots(self, keys: torch.Tensor, thresholds: torch.Tensor, classes: torch.Tensor) -> None:
        """Append slots (keys already embedded); the key parameter is replaced by a longer one, so
        an optimiser holding the old one must be rebuilt."""
        self.keys = nn.Parameter(torch.cat([self.keys.detach(), keys.to(self.keys)]),
                                 requires_grad=self.keys.requires_grad)
        self.thresholds = torch.cat([self.thresholds, thresholds.to(self.thresholds)])
        self.slot_classes = torch.cat([self.slot_classes, classes.to(self.slot_classes)])


def _describe(x: Any) -> str:
    return f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__


# -- the fit ---------------------------------------------------------------------------------------

def _check_data(layer: IncrementalNeuralHashing, x: Any, labels: Any) -> None:
    """Training inputs ``x`` (non-empty, finite, ``in_features`` per row) and ``labels`` (given
    exactly when the layer has classes, integers in ``0..K-1``)."""
    if not isinstance(layer, IncrementalNeuralHashing):
        raise InvalidInputError(f"layer must be an IncrementalNeuralHashing, got {type(layer).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise InvalidInputError(f"x must be a float tensor (N, ...) of training inputs, got {_describe(x)}")
    if len(x) == 0:
        raise InvalidInputError("x is empty: the fit needs at least one training input")
    if x[0].numel() != layer.in_features:
        raise InvalidInputError(f"x has {x[0].numel()} features per input, the layer takes "
                                f"in_features={layer.in_features}")
    if not bool(torch.isfinite(x).all()):
        raise InvalidInputError("x holds NaN or inf; every training input must be finite")
    if layer.n_classes is None:
        if labels is not None:
            raise InvalidInputError("labels given to an unsupervised layer (n_classes=None); build "
                                    "the layer with n_classes=K to fit a classifier")
        return
    if labels is None:
        raise InvalidInputError(f"labels are required for a layer with n_classes={layer.n_classes} "
                                "(build it with n_classes=None for unsupervised hashing)")
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex() \
            or labels.dtype == torch.bool or labels.shape != (len(x),):
        raise InvalidInputError(f"labels must be an integer tensor ({len(x)},), got {_describe(labels)}")
    if int(labels.min()) < 0 or int(labels.max()) >= layer.n_classes:
        bad = labels[(labels < 0) | (labels >= layer.n_classes)]
        raise InvalidInputError(f"labels must lie in 0..{layer.n_classes - 1} (n_classes="
                                f"{layer.n_classes}); {len(bad)} do not (values "
                                f"{sorted(set(bad.tolist()))[:5]})")


def _check_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidInputError(f"{name} must be an integer >= 1, got {value!r}")


def _check_fit_args(layer: IncrementalNeuralHashing, x: Any, labels: Any, max_match_percent: Any,
                    batch_size: Any, max_passes: Any, eps: Any, threshold_mode: Any) -> None:
    _check_data(layer, x, labels)
    _check_int(batch_size, "batch_size")
    _check_int(max_passes, "max_passes")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps) or eps <= 0:
        raise InvalidInputError(f"eps must be a finite number > 0, got {eps!r}")
    if threshold_mode not in THRESHOLD_MODES:
        raise InvalidInputError(f"threshold_mode must be one of {', '.join(THRESHOLD_MODES)}, got "
                                f"{threshold_mode!r}")
    if layer.n_classes is not None:
        if max_match_percent is not None:
            raise InvalidInputError("max_match_percent is for unsupervised fits (layer with "
                                    "n_classes=None); a classifier's thresholds come from the labels")
        return
    if isinstance(max_match_percent, bool) or not isinstance(max_match_percent, numbers.Real) \
            or not 0 < max_match_percent <= 100:
        raise InvalidInputError(f"max_match_percent must be a number in (0, 100] (the share of a "
                                f"batch one slot may match), got {max_match_percent!r}")
    smallest = len(x) // math.ceil(len(x) / batch_size)  # batches are split evenly
    if math.floor(max_match_percent * smallest / 100 + 1e-9) < 1:
        raise InvalidInputError(
            f"max_match_percent={max_match_percent} of a batch of {smallest} inputs allows no "
            f"match; use max_match_percent >= {100 / smallest:.4g} or a larger batch_size")


def candidate_coverage(layer: IncrementalNeuralHashing, z: torch.Tensor, labels: torch.Tensor | None,
                       cand: torch.Tensor, eps: float, max_match_percent: float | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Step 3 of the fit for one batch: ``(A, t)`` with ``t_i`` the threshold of candidate ``i``
    as a key against the whole embedded batch ``z`` (``precision_thresholds``, or
    ``quantile_thresholds`` without labels) and ``A`` ``(C, C)`` the coverage among the
    candidates ``cand`` (indices into ``z``): ``A[i, j] = m(z_i, z_j) > t_i`` (and same class)."""
    key_match = layer.similarity_of(z[cand], z)  # (C, n)
    if labels is None:
        t_key = quantile_thresholds(key_match.T, max_match_percent, eps)
        return coverage_matrix(key_match[:, cand], t_key), t_key
    yc = labels[cand]
    t_key = precision_thresholds(key_match.T, labels, yc, eps)
    return coverage_matrix(key_match[:, cand], t_key, yc[:, None] == yc[None, :]), t_key


@torch.no_grad()
def fit_inh(layer: IncrementalNeuralHashing, x: torch.Tensor, labels: torch.Tensor | None = None, *,
            max_match_percent: float | None = None, batch_size: int = 2000, max_passes: int = 10,
            eps: float = 1e-4, threshold_mode: str = "max", generator: torch.Generator | None = None,
            on_pass: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    r"""Grow ``layer``'s slots on ``x`` ``(N, ...)`` (steps 1-5 of the module docstring); returns
    one row per pass: ``pass``, ``slots``, ``new_slots``, ``raised_thresholds``, ``candidates``
    (inputs unmatched when their batch came), ``uncoverable`` (candidates no candidate covers,
    e.g. a duplicate of an input of another class) and ``seconds``.

    ``labels`` ``(N,)`` in ``0..K-1`` fit a classifier layer; an unsupervised layer (``n_classes=
    None``) takes ``max_match_percent`` ``X`` in ``(0, 100]`` instead. ``x`` is split once, in a
    random order (``generator``), into ``ceil(N / batch_size)`` batches of nearly equal size,
    visited in the same order every pass. ``eps`` keeps the closest input of another class
    strictly below a threshold.

    ``threshold_mode``:

    * ``"max"`` (default): ``t_s <- max(t_s, t_s(B))``, the running maximum of the batch
      thresholds ``t_s(B)`` (step 1), so a slot keeps 100 % precision (at most ``X %`` matches) on
      every batch it has seen. Passes stop once one adds no slot and raises no threshold: then
      every training input is fired by a slot of its class (some slot) and, supervised, by no slot
      of another class, so every training input is classified correctly; unsupervised, every slot
      matches at most ``floor(X n_b / 100)`` inputs of each batch ``b``.
    * ``"batch"``: each batch uses its own ``t_s(B)`` only (the log's rule, read literally, like
      batch statistics in BatchNorm); the stored ``t_s`` (used by ``forward``) is the mean of the
      slot's batch thresholds over the last pass. Passes stop once one adds no slot. Small
      batches make thresholds permissive: far fewer slots, no training-accuracy guarantee.

    Stops after ``max_passes`` at the latest. ``on_pass(row)`` is called after each pass. Batches
    are moved to the layer's device and dtype.
    """
    _check_fit_args(layer, x, labels, max_match_percent, batch_size, max_passes, eps, threshold_mode)
    supervised = layer.n_classes is not None
    device, dtype = layer.keys.device, layer.keys.dtype
    n = len(x)
    # one random split for all passes: once a slot has seen every batch its threshold is final,
    # so the passes converge (new batches every pass would keep raising quantile thresholds)
    order = torch.randperm(n, generator=generator, device=draw_device(generator))
    batches = torch.tensor_split(order, math.ceil(n / batch_size))
    rows = []
    for pass_ in range(1, max_passes + 1):
        t0 = time.perf_counter()
        added = raised = candidates = uncoverable = 0
        t_sum = torch.zeros_like(layer.thresholds)  # "batch" mode: the pass's mean threshold
        t_count = torch.zeros_like(layer.thresholds)
        for batch in batches:
            z = layer.embed(x[batch].to(device=device, dtype=dtype))
            y = labels[batch].to(device) if supervised else None
            m = layer.similarity_of(z, layer.keys)
            # (1) thresholds: the lowest with 100 % precision (at most X % matches) on the batch
            new = precision_thresholds(m, y, layer.slot_classes, eps) if supervised else \
                quantile_thresholds(m, max_match_percent, eps)
            if threshold_mode == "max":
                raised += int((new > layer.thresholds).sum())
                layer.thresholds = torch.maximum(layer.thresholds, new)
                new = layer.thresholds
            else:
                seen = new > _floor(new.dtype)  # a batch without other classes says nothing
                t_sum += torch.where(seen, new, torch.zeros_like(new))
                t_count += seen
            # (2) candidates: inputs no slot of their class (no slot at all, unsupervised) fires for
            fired = m >= new
            if supervised:
                fired &= layer.slot_classes[None, :] == y[:, None]
            cand = torch.nonzero(~fired.any(1)).squeeze(1)
            if not len(cand):
                continue
            # (3) coverage, (4) greedy set cover, (5) the chosen candidates become slots
            cover, t_key = candidate_coverage(layer, z, y, cand, eps, max_match_percent)
            chosen = greedy_set_cover(cover)
            candidates += len(cand)
            uncoverable += int((~cover.any(0)).sum())
            added += len(chosen)
            layer.add_slots(z[cand[chosen]], t_key[chosen],
                            y[cand[chosen]] if supervised else torch.full_like(chosen, -1))
            t_sum = torch.cat([t_sum, t_key[chosen]])
            t_count = torch.cat([t_count, torch.ones_like(t_key[chosen])])
        if threshold_mode == "batch":
            layer.thresholds = torch.where(t_count > 0, t_sum / t_count.clamp_min(1), layer.thresholds)
        row = {"pass": pass_, "slots": layer.n_slots, "new_slots": added,
               "raised_thresholds": raised, "candidates": candidates, "uncoverable": uncoverable,
               "seconds": round(time.perf_counter() - t0, 3)}
        rows.append(row)
        if on_pass is not None:
            on_pass(row)
        if added == 0 and raised == 0:
            break
    return rows


@torch.no_grad()
def prune_inh(layer: IncrementalNeuralHashing, x: torch.Tensor, labels: torch.Tensor | None = None,
              *, batch_size: int = 4096) -> torch.Tensor:
    r"""Keep a small set of slots that still covers every training input covered now: the greedy
    set cover (:func:`greedy_set_cover`) whose sets are the slots and whose elements are the
    inputs of ``x``, ``slot s covers input i`` iff ``m_s(x_i) >= t_s`` (and ``c_s = y_i`` with
    ``labels``). Keys, thresholds and classes of the kept slots are unchanged, so each keeps its
    precision, and an input fired by a slot of its class still is (after a ``"max"`` fit every
    training input stays classified correctly). Slots whose inputs others cover are removed
    (including dead slots that fire for no input). Returns the kept slot indices (ascending).

    Supervised, the coverage is block-diagonal by class, so the set cover runs per class (the
    same choice as on the whole matrix, with ``S_k x N_k`` blocks instead of ``S x N``).
    """
    _check_data(layer, x, labels)
    _check_int(batch_size, "batch_size")
    device = layer.keys.device
    fires = torch.cat([layer.fires(xb.to(device=device, dtype=layer.keys.dtype))
                       for xb in x.split(batch_size)])  # (N, S)
    if labels is None:
        keep = greedy_set_cover(fires.T.contiguous())
    else:
        labels = labels.to(device)
        keep = []
        for k in range(layer.n_classes):  # one block per class; the loop is over classes only
            slots = torch.nonzero(layer.slot_classes == k).squeeze(1)
            block = fires[labels == k][:, slots].T.contiguous()
            keep.append(slots[greedy_set_cover(block)])
        keep = torch.cat(keep)
    keep = keep.sort().values
    layer.keys = nn.Parameter(layer.keys.detach()[keep], requires_grad=layer.keys.requires_grad)
    layer.thresholds = layer.thresholds[keep]
    layer.slot_classes = layer.slot_classes[keep]
    return keep


def _check_positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value <= 0:
        raise InvalidInputError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def tune_inh(layer: IncrementalNeuralHashing, x: torch.Tensor, labels: torch.Tensor, *,
             epochs: int = 8, lr: float = 3e-3, temperature: float = 0.02, batch_size: int = 256,
             generator: torch.Generator | None = None,
             on_epoch: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    r"""Train a fitted classifier layer's keys and thresholds by gradient descent (the slots keep
    their number and classes); returns one row per epoch: ``epoch``, ``loss`` (mean over the
    epoch), ``train_accuracy`` (of the batches as they were trained), ``seconds``.

    The loss is the cross-entropy of the soft OR of each class's slot margins,
    ``l(x, y) = CE(softmax_k(y_k(x) / tau), y)`` with ``y_k = tau log sum_{s: c_s = k}
    exp((m_s(x) - t_s) / tau)`` (:meth:`IncrementalNeuralHashing.class_scores`), so the winning slot
    of the right class is pulled towards ``x`` and the best wrong ones pushed away. The keys are
    trained through the embedding (``w_s = embed(v_s)``: the similarity's normalisation of a free
    vector ``v_s``), so they stay valid keys; optimiser Adam, learning rate ``lr`` on a one-cycle
    schedule, ``batch_size`` inputs per step, batches in a random order per epoch (``generator``).

    After tuning, ``t_s`` is a learned offset rather than the fit's 100 %-precision threshold: a
    slot fires (``m_s(x) >= t_s``) where the gradient stage put its boundary. The log trains its
    slots by plain SGD between slot expansions; here the expansion (:func:`fit_inh`) comes first
    and the gradient stage after it, which keeps both steps simple to test.
    """
    _check_data(layer, x, labels)
    if layer.n_classes is None:
        raise InvalidInputError("tune_inh trains a classifier layer (n_classes=K); an unsupervised "
                                "hash layer has no class loss to train on")
    if layer.n_slots == 0:
        raise InvalidInputError("the layer has no slots yet; fit it first (fit_inh)")
    for value, name in ((epochs, "epochs"), (batch_size, "batch_size")):
        _check_int(value, name)
    lr, temperature = _check_positive(lr, "lr"), _check_positive(temperature, "temperature")
    device, dtype = layer.keys.device, layer.keys.dtype
    free = nn.Parameter(layer.keys.detach().clone())
    thresholds = nn.Parameter(layer.thresholds.detach().clone())
    optimiser = torch.optim.Adam([free, thresholds], lr=lr)
    steps = math.ceil(len(x) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, lr, total_steps=epochs * steps)
    labels = labels.to(device)
    rows = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        loss_sum = correct = 0.0
        for batch in torch.randperm(len(x), generator=generator, device=draw_device(generator)).split(batch_size):
            z = layer.embed(x[batch].to(device=device, dtype=dtype))
            margins = layer.similarity_of(z, layer.embed(free)) - thresholds
            scores = layer.class_scores(margins, temperature)
            loss = F.cross_entropy(scores / temperature, labels[batch])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            loss_sum += float(loss.detach()) * len(batch)
            correct += float((scores.argmax(1) == labels[batch]).sum())
        if not math.isfinite(loss_sum):
            raise InvalidInputError(f"tune_inh diverged at epoch {epoch} (loss {loss_sum}); use a "
                                    f"smaller lr (got {lr}) or a larger temperature (got {temperature})")
        row = {"epoch": epoch, "loss": round(loss_sum / len(x), 6),
               "train_accuracy": round(correct / len(x), 6),
               "seconds": round(time.perf_counter() - t0, 3)}
        rows.append(row)
        if on_epoch is not None:
            on_epoch(row)
    with torch.no_grad():
        layer.keys = nn.Parameter(layer.embed(free).detach(), requires_grad=layer.keys.requires_grad)
        layer.thresholds = thresholds.detach().clone()
    return rows
