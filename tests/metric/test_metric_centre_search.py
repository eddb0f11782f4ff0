"""Noisy centre search (cached distances) against a from-scratch, per-sample float64 reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pellucid.train.centre_search import centre_significance, noisy_centre_search

from test_metric_models import synthetic_images


def slow_activations(d, similarity):
    """One sample's ``a``: ``softmax(-d)`` or ``exp(-2 (d - min d) / std d)``."""
    if similarity == "softmax":
        e = torch.exp(-(d - d.min()))
        return e / e.sum()
    return torch.exp(-2.0 * (d - d.min()) / (d.std() + 1e-8))


def slow_significance(x, y, centres, labels, classes, similarity):
    """``s_j = sum_b (a_bj dL_b/da_bj)^2`` with ``dL/da_j = sum_c (p_c - [c = y]) V_jc``, one sample at a time."""
    values = F.one_hot(labels, classes).double()
    total = torch.zeros(len(centres), dtype=torch.float64)
    for xb, yb in zip(x, y):
        d = (xb - centres).pow(2).sum(1).sqrt()
        a = slow_activations(d, similarity)
        p = torch.softmax(a @ values, 0)
        grad = values @ (p - F.one_hot(yb, classes).double())
        total += (a * grad) ** 2
    return total


def slow_search(x, y, tx, ty, *, hidden, add, rounds, classes, seed, similarity, score_samples=None):
    """The same random draws as the search, everything recomputed from the centres each round."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(x), generator=gen)[:hidden]

    def accuracy(r):
        values = F.one_hot(y[r], classes).double()
        logits = torch.stack([slow_activations((p - x[r]).pow(2).sum(1).sqrt(), similarity) @ values for p in tx])
        return float((logits.argmax(1) == ty).double().mean())

    history = [accuracy(rows)]
    for _ in range(rounds):
        rows = torch.cat([rows, torch.randint(len(x), (add,), generator=gen)])
        scored = torch.randperm(len(x), generator=gen)[:score_samples] if score_samples else slice(None)
        s = slow_significance(x[scored], y[scored], x[rows], y[rows], classes, similarity)
        rows = rows[torch.topk(s, hidden).indices.sort().values]
        history.append(accuracy(rows))
    return rows, history


@pytest.mark.parametrize("similarity", ["softmax", "min-exp"])
@pytest.mark.parametrize("seed,score_samples", [(0, None), (1, None), (2, 50)])
def test_search_equals_the_from_scratch_reference(seed, score_samples, similarity):
    x, y = synthetic_images(n_per_class=30, noise=0.25, seed=seed)
    tx, ty = synthetic_images(n_per_class=15, noise=0.25, seed=seed + 10)
    x, tx = x.flatten(1).double() * 2 - 1, tx.flatten(1).double() * 2 - 1
    x, tx = x / 4, tx / 4  # distances of a few units: a softmax that is not one-hot
    kw = dict(hidden=5, add=4, rounds=4, classes=3, seed=seed, score_samples=score_samples, similarity=similarity)
    out = noisy_centre_search(x, y, tx, ty, **kw)
    rows, history = slow_search(x, y, tx, ty, **kw)
    assert torch.equal(out["rows"], rows)
    assert torch.equal(out["centres"], x[rows]) and torch.equal(out["labels"], y[rows])
    assert out["test_accuracy"] == pytest.approx(history, abs=1e-6)  # a float32 mean


@pytest.mark.parametrize("similarity", ["softmax", "min-exp"])
def test_significance_matches_the_per_sample_formula(similarity):
    x, y = synthetic_images(n_per_class=10, noise=0.2, seed=5)
    x = (x.flatten(1).double() * 2 - 1) / 4
    centres, labels = x[::6], y[::6]
    got = centre_significance(x, y, centres, F.one_hot(labels, 3).double(), batch_size=7, similarity=similarity)
    expected = slow_significance(x, y, centres, labels, 3, similarity)
    assert bool((expected > 0).all())
    # cdist's matrix-product distances vs direct differences: ~1e-10 apart at the centres themselves
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-12)


def test_unknown_similarity_is_refused_in_one_line():
    from pellucid.errors import InvalidInputError

    x, y = synthetic_images(n_per_class=5, seed=0)
    with pytest.raises(InvalidInputError, match="similarity") as caught:
        noisy_centre_search(x.flatten(1), y, x.flatten(1), y, hidden=3, add=2, rounds=1, classes=3,
                            similarity="cosine")
    assert "\n" not in str(caught.value)
