"""Registered models and the checkpoint format shared by the CLI, app, benchmarks and tests."""

from pellucid.models.checkpoint import is_model_dir, load_model, load_weights, read_config, save_model
from pellucid.models.registry import MODELS, ModelSpec, create_model, register_model
from pellucid.models.metric import DictionaryMLP, MetricMLP, MetricResNet20
from pellucid.models.whitebox import WhiteBoxNet, convert_authors_state_dict, whitebox_mnist35
from pellucid.models.lenet import LeNet, lenet_mnist35
from pellucid.models.madry import MadryCNN
from pellucid.models.disjunction import DirectionalNet, DisjunctionNet  # noqa: F401  (registers them)
from pellucid.models import inh  # noqa: F401,E402  (registers inh-mnist)
from pellucid.models import fid_inception, imagenet  # noqa: F401,E402  (register ImageNet models)

__all__ = ["DictionaryMLP", "LeNet", "MadryCNN", "MetricMLP", "MetricResNet20", "MODELS", "ModelSpec", "WhiteBoxNet", "convert_authors_state_dict", "create_model",
           "is_model_dir", "lenet_mnist35", "load_model", "load_weights", "read_config", "register_model",
           "save_model", "whitebox_mnist35"]
