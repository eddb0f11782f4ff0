"""Noisy centre search: choose a dictionary's centres from the training data without backprop.

Start from ``H`` random training samples as centres (one-hot values). Each round:

1. add ``K`` random training samples as new centres (one-hot values);
2. score every centre by its significance ``s_j = sum_{x in train} (a_j(x) dL/da_j(x))^2``
   (first-order estimate of the loss change when neuron ``j`` is removed);
3. prune the ``K`` least significant centres.

The logits are ``a V`` (``V`` one-hot rows) with activations ``a`` of the Euclidean distances
``d``: by default (``similarity="softmax"``) the dictionary's epsilon-softmax without its epsilon
neuron, ``a = softmax(-s d)`` (``s = scale``, 1); or (``"min-exp"``) the data-init table's
``a = exp(-k (d - min_j d) / std_j d)``. Only the gradient with respect to ``a`` is taken, never
with respect to parameters. Paper setting on Fashion-MNIST: ``H = 100, K = 30``, 30 rounds.

Vectorised: the distances from every training and test sample to the current centres are kept as
``(N, H)`` matrices; a round computes only the ``K`` new columns, and pruning drops columns, so no
distance is computed twice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pellucid._device import draw_device
from pellucid.errors import InvalidInputError
from pellucid.nn.metric.distance import lp_distance
from pellucid.nn.metric.similarity import distance_softmax, min_exp_similarity

__all__ = ["SIMILARITIES", "centre_significance", "dictionary_accuracy", "noisy_centre_search",
           "search_activations", "significance_from_distances"]

SIMILARITIES = ("softmax", "min-exp")


def search_activations(d: torch.Tensor, similarity: str = "softmax", scale: float = 1.0,
                       k: float = 2.0) -> torch.Tensor:
    """``a`` ``(N, H)`` from distances ``d``: ``softmax(-scale d)`` or ``exp(-k (d - min d) / std d)``."""
    if similarity == "softmax":
        return distance_softmax(d, scale)
    if similarity == "min-exp":
        return min_exp_similarity(d, k=k)
    raise InvalidInputError(f"similarity must be one of {', '.join(SIMILARITIES)}, got {similarity!r}")


def _distances(x: torch.Tensor, centres: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """``||x_b - c_j||_2`` ``(N, H)``, computed ``batch_size`` rows at a time."""
    return torch.cat([lp_distance(xb, centres, 2.0) for xb in x.split(batch_size)])


def _accuracy_from_distances(d: torch.Tensor, y: torch.Tensor, values: torch.Tensor, **act) -> float:
    """Accuracy of ``argmax a V`` with ``a`` the :func:`search_activations` of distances ``d`` ``(N, H)``."""
    return float((search_activations(d, **act) @ values).argmax(1).eq(y).float().mean())


@torch.no_grad()
def dictionary_accuracy(x, y, centres, values, *, batch_size: int = 2000, **act) -> float:
    """Accuracy of ``argmax a V`` on flat inputs ``x`` ``(N, D)`` (``act``: :func:`search_activations`'s)."""
    return _accuracy_from_distances(_distances(x, centres, batch_size), y, values, **act)


def significance_from_distances(d: torch.Tensor, y: torch.Tensor, values: torch.Tensor, **act) -> torch.Tensor:
    """``s_j = sum_b (a_bj dL_b/da_bj)^2`` ``(H,)`` from distances ``d`` ``(N, H)``: ``a`` the
    :func:`search_activations`, ``L_b`` the cross-entropy of the logits ``a_b V`` for label ``y_b``."""
    with torch.no_grad():
        a = search_activations(d, **act)
    a.requires_grad_(True)
    with torch.enable_grad():
        per_sample = F.cross_entropy(a @ values, y, reduction="none")
        (grad,) = torch.autograd.grad(per_sample.sum(), a)  # row b only depends on sample b
    return (a.detach() * grad).pow(2).sum(0)


def centre_significance(x, y, centres, values, *, batch_size: int = 2000, **act) -> torch.Tensor:
    """``s_j = sum_x (a_j dL/da_j)^2`` over ``x`` ``(N, D)``, cross-entropy ``L`` of the logits ``a V``."""
    return significance_from_distances(_distances(x, centres, batch_size), y, values, **act)


def noisy_centre_search(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                        test_y: torch.Tensor, *, hidden: int = 100, add: int = 30, rounds: int = 30,
                        classes: int = 10, similarity: str = "softmax", scale: float = 1.0,
                        k: float = 2.0, score_samples: int | None = None, seed: int = 0) -> dict:
    """Run the search on flat inputs (``(N, D)``); returns the final centres, their labels and the
    test accuracy after every round (``history[0]`` = random initialisation).

    ``score_samples``: score on that many random training samples per round (``None``: all of
    them, as in the paper)."""
    if hidden < 2 or add < 1 or rounds < 0:
        raise InvalidInputError(f"need hidden >= 2, add >= 1, rounds >= 0; got {hidden}, {add}, {rounds}")
    if train_x.dim() != 2 or train_x.shape[0] != train_y.shape[0] or train_x.shape[0] < hidden + add:
        raise InvalidInputError("train_x must be (N, D) with N >= hidden + add rows, one label each")
    act = {"similarity": similarity, "scale": scale, "k": k}
    search_activations(torch.zeros(1, 2), **act)  # an unknown similarity fails before any work
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(train_x), generator=gen, device=draw_device(gen))[:hidden]  # the centres: rows
    train_d, test_d = _distances(train_x, train_x[rows]), _distances(test_x, train_x[rows])  # (N, H)

    def values_of(r):
        return F.one_hot(train_y[r], classes).to(train_x.dtype)

    history = [_accuracy_from_distances(test_d, test_y, values_of(rows), **act)]
    for _ in range(rounds):
        new = torch.randint(len(train_x), (add,), generator=gen, device=draw_device(gen))
        rows = torch.cat([rows, new])
        train_d = torch.cat([train_d, _distances(train_x, train_x[new])], 1)  # (N, H + K)
        test_d = torch.cat([test_d, _distances(test_x, train_x[new])], 1)
        scored = (torch.randperm(len(train_x), generator=gen, device=draw_device(gen))[:score_samples]
                  if score_samples else slice(None))
        significance = significance_from_distances(train_d[scored], train_y[scored], values_of(rows), **act)
        keep = torch.topk(significance, hidden).indices.sort().values
        rows, train_d, test_d = rows[keep], train_d[:, keep], test_d[:, keep]
        history.append(_accuracy_from_distances(test_d, test_y, values_of(rows), **act))
    return {"centres": train_x[rows].clone(), "labels": train_y[rows], "rows": rows, "test_accuracy": history}
