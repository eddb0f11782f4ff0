"""Noisy centre search: choose a dictionary's centres from the training data without backprop.

Start from ``H`` random training samples as centres (one-hot values). Each round:

1. add ``K`` random training samples as new centres (one-hot values);
2. score every centre by its significance ``s_j = sum_{x in train} (a_j(x) dL/da_j(x))^2``
   (first-order estimate of the loss change when neuron ``j`` is removed);
3. prune the ``K`` least significant centres.

Activations are the min-exp similarity ``a = exp(-k (d - min_j d) / std_j d)`` of the data-init
table and the logits ``a V`` (``V`` one-hot rows). Only the gradient with respect to ``a`` is taken,
never with respect to parameters. Paper setting on Fashion-MNIST: ``H = 100, K = 30``, 30 rounds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pellucid.errors import InvalidInputError
from pellucid.nn.distance import lp_distance
from pellucid.nn.similarity import min_exp_similarity

__all__ = ["centre_significance", "dictionary_accuracy", "noisy_centre_search"]


def _logits(x: torch.Tensor, centres: torch.Tensor, values: torch.Tensor, k: float):
    a = min_exp_similarity(lp_distance(x, centres, 2.0), k=k)  # (B, H)
    return a, a @ values


@torch.no_grad()
def dictionary_accuracy(x, y, centres, values, k: float = 2.0, batch_size: int = 2000) -> float:
    """Accuracy of ``argmax a V`` on flat inputs ``x`` ``(N, D)``."""
    correct = sum(int((_logits(xb, centres, values, k)[1].argmax(1) == yb).sum())
                  for xb, yb in zip(x.split(batch_size), y.split(batch_size)))
    return correct / len(y)


def centre_significance(x, y, centres, values, k: float = 2.0, batch_size: int = 2000) -> torch.Tensor:
    """``s_j = sum_x (a_j dL/da_j)^2`` over ``x`` ``(N, D)``, cross-entropy ``L`` of the logits ``a V``."""
    total = torch.zeros(centres.shape[0], dtype=centres.dtype, device=centres.device)
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        with torch.no_grad():
            a = min_exp_similarity(lp_distance(xb, centres, 2.0), k=k)
        a.requires_grad_(True)
        with torch.enable_grad():
            per_sample = F.cross_entropy(a @ values, yb, reduction="none")
            (grad,) = torch.autograd.grad(per_sample.sum(), a)  # row b only depends on sample b
        total += (a.detach() * grad).pow(2).sum(0)
    return total


def noisy_centre_search(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                        test_y: torch.Tensor, *, hidden: int = 100, add: int = 30, rounds: int = 30,
                        classes: int = 10, k: float = 2.0, score_samples: int | None = 10000,
                        seed: int = 0) -> dict:
    """Run the search on flat inputs (``(N, D)``); returns the final centres, their labels and the
    test accuracy after every round (``history[0]`` = random initialisation)."""
    if hidden < 2 or add < 1 or rounds < 0:
        raise InvalidInputError(f"need hidden >= 2, add >= 1, rounds >= 0; got {hidden}, {add}, {rounds}")
    if train_x.dim() != 2 or train_x.shape[0] != train_y.shape[0] or train_x.shape[0] < hidden + add:
        raise InvalidInputError("train_x must be (N, D) with N >= hidden + add rows, one label each")
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(train_x), generator=gen)[:hidden]
    labels = train_y[rows]
    centres = train_x[rows].clone()

    def values_of(lab):
        return F.one_hot(lab, classes).to(train_x.dtype)

    history = [dictionary_accuracy(test_x, test_y, centres, values_of(labels), k)]
    for _ in range(rounds):
        new = torch.randint(len(train_x), (add,), generator=gen)
        centres, labels = torch.cat([centres, train_x[new]]), torch.cat([labels, train_y[new]])
        score_rows = (torch.randperm(len(train_x), generator=gen)[:score_samples]
                      if score_samples else torch.arange(len(train_x)))
        significance = centre_significance(train_x[score_rows], train_y[score_rows], centres,
                                           values_of(labels), k)
        keep = torch.topk(significance, hidden).indices.sort().values
        centres, labels = centres[keep], labels[keep]
        history.append(dictionary_accuracy(test_x, test_y, centres, values_of(labels), k))
    return {"centres": centres, "labels": labels, "test_accuracy": history}
