"""Layers, one subpackage per family:

* :mod:`pellucid.nn.semantic`: semantic features (white-box paper);
* :mod:`pellucid.nn.metric`: metric neurons (Metric as Transform);
* :mod:`pellucid.nn.disjunctive`: the research log's disjunctive and hashing blocks;
* :mod:`pellucid.nn.geometry`: rotations and affine warps shared by the families.
"""

from pellucid.nn.disjunctive import *  # noqa: F401,F403
from pellucid.nn.disjunctive import __all__ as _disjunctive
from pellucid.nn.metric import *  # noqa: F401,F403
from pellucid.nn.metric import __all__ as _metric
from pellucid.nn.semantic import *  # noqa: F401,F403
from pellucid.nn.semantic import __all__ as _semantic

__all__ = [*_semantic, *_metric, *_disjunctive]
