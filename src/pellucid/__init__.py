"""pellucid: white-box neural networks and explanations you can trust.

Subpackages, one concept each (imports point one way:
``cli/app/report -> explain, robust, train -> models -> nn -> torch``):

- :mod:`pellucid.data`     datasets (MNIST, Fashion-MNIST, CIFAR-10: IDX files, packages, torchvision)
- :mod:`pellucid.nn`       layers by family: ``semantic`` (white-box), ``metric`` (distance neurons),
  ``disjunctive`` (the research log's blocks)
- :mod:`pellucid.models`   registered model builders and the checkpoint format
- :mod:`pellucid.train`    the trainer and registered training recipes
- :mod:`pellucid.robust`   attacks, AutoAttack budgets, masking checks, reliability, rejection
- :mod:`pellucid.explain`  pullbacks, counterfactuals, targets, baselines, faithfulness metrics
- :mod:`pellucid.viz`      figures
- :mod:`pellucid.report`   evaluation records and the self-contained HTML report
- :mod:`pellucid.app`      the browser explorer; :mod:`pellucid.cli` the ``pellucid`` command
"""

from pellucid.errors import PellucidError

__version__ = "0.1.0"
__all__ = ["PellucidError", "__version__"]
