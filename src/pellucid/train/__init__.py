"""Training: the shared trainer and the registered recipes (``pellucid train NAME``)."""

from pellucid.train.recipes import RECIPES, Recipe, register_recipe, train_registered_classifier
from pellucid.train.trainer import TrainConfig, fit, split_train_val
from pellucid.train import metric_recipes  # noqa: F401  (registers the metric-neuron recipes)
from pellucid.train import inh  # noqa: F401  (registers inh-mnist)

__all__ = ["RECIPES", "Recipe", "TrainConfig", "fit", "register_recipe", "split_train_val",
           "train_registered_classifier"]
