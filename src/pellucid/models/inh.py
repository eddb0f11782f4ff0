r"""A fitted Incremental Neural Hashing classifier on MNIST pixels (``inh-mnist``).

One :class:`pellucid.nn.disjunctive.hashing.IncrementalNeuralHashing` layer on the 784 pixels: class ``k``'s
score is ``y_k(x) = max_{s: c_s = k} (m_s(x) - t_s)``. Slots come from the greedy fit
(``pellucid train inh-mnist``), not from gradient training, so their number is data-dependent:
the model directory's ``kwargs`` record ``n_slots`` and the builder makes an empty layer of that
size for the saved keys, thresholds and slot classes to load into.
"""

from __future__ import annotations

from pellucid.models.registry import register_model
from pellucid.nn.disjunctive.hashing import IncrementalNeuralHashing

__all__ = ["inh_mnist"]


@register_model("inh-mnist", input_shape=(1, 28, 28), dataset="mnist",
                summary="Incremental Neural Hashing: 1 layer of slots on MNIST pixels, 10 classes")
def inh_mnist(n_slots: int = 0, similarity: str = "centred-cosine") -> IncrementalNeuralHashing:
    """``n_slots`` slots (zero keys until fitted or loaded) on 1 x 28 x 28 images, 10 classes."""
    return IncrementalNeuralHashing(28 * 28, 10, n_slots=n_slots, similarity=similarity)
