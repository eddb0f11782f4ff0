"""The research log's disjunctive building blocks: grouped disjunctions and their relaxations
(``blocks``: :class:`SoftMaxPool`, :class:`MaxMatch`, :class:`GumbelConv2d`, positive
convolutions) and Incremental Neural Hashing (``hashing``: :class:`IncrementalNeuralHashing`)."""

from pellucid.nn.disjunctive.blocks import (GumbelConv2d, L2Conv2d, MaxMatch, Mean, PositiveConv2d, Scale,
                                            SoftMaxPool, exponential_anneal)
from pellucid.nn.disjunctive.hashing import IncrementalNeuralHashing

__all__ = ["GumbelConv2d", "IncrementalNeuralHashing", "L2Conv2d", "MaxMatch", "Mean", "PositiveConv2d",
           "Scale", "SoftMaxPool", "exponential_anneal"]
