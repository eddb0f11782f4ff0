"""Implementation of :mod:`pellucid.explain.metrics` (import from there)."""

# imported in this order so that METRICS lists the metrics in this order
from pellucid.explain._metrics import faithfulness, robustness, randomisation, curves, localisation

__all__ = ["curves", "faithfulness", "localisation", "randomisation", "robustness"]
