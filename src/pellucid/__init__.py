"""pellucid: white-box neural networks and explanations you can trust.

Subpackages, one concept each (imports point one way:
``cli/app/report -> explain, robust, train -> models -> nn -> torch``):

- :mod:`pellucid.data`     datasets (MNIST from IDX files, embedded packages or torchvision)
- :mod:`pellucid.nn`       layers (semantic features: TwoStep, rotation/affine/logical features)
- :mod:`pellucid.models`   registered model builders and the checkpoint format
- :mod:`pellucid.train`    the trainer and registered training recipes
- :mod:`pellucid.robust`   attacks, reliability curves, accuracy-vs-eps
- :mod:`pellucid.explain`  explanations (pullbacks, counterfactuals)
- :mod:`pellucid.viz`      figures
- :mod:`pellucid.report`   the self-contained HTML report
"""

from pellucid.errors import PellucidError

__version__ = "0.1.0"
__all__ = ["PellucidError", "__version__"]
