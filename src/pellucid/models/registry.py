"""The model registry: one place that the CLI, the app, the benchmarks and the tests build from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from pellucid._registry import Registry
from pellucid.data.datasets import check_classes


@dataclass(frozen=True)
class ModelSpec:
    """How to build a registered model and what it expects as input.

    ``dataset``/``classes`` name the data it is trained and evaluated on (``classes`` are the
    original labels kept, in ascending order; output ``i`` means ``classes[i]``); ``input_shape``
    excludes the batch axis; ``value_range`` is the natural input range (attacks and checks use it).
    """

    name: str
    builder: Callable[..., nn.Module]
    summary: str
    input_shape: tuple[int, ...] | None = None
    value_range: tuple[float, float] = (0.0, 1.0)
    dataset: str | None = None
    classes: tuple[int, ...] | None = None
    defaults: dict[str, Any] = field(default_factory=dict)


MODELS: Registry[ModelSpec] = Registry("model")


def register_model(name: str, *, input_shape=None, value_range=(0.0, 1.0), dataset=None,
                   classes=None, summary: str = ""):
    """Decorator registering a builder ``f(**kwargs) -> nn.Module`` under ``name``.

    ``classes`` must be ascending distinct original labels (see
    :func:`pellucid.data.check_classes`): the same rule as :func:`pellucid.data.load_dataset`, so
    a model's output ``i`` and the data's label ``i`` name the same class.
    """
    if classes is not None:
        classes = check_classes(classes, name=f"classes of model {name!r}")

    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        doc = summary or (builder.__doc__ or "").strip().split("\n")[0]
        spec = ModelSpec(name, builder, doc, tuple(input_shape) if input_shape else None,
                         tuple(value_range), dataset, tuple(classes) if classes else None)
        MODELS.register(name, doc)(spec)
        return builder

    return add


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` (randomly initialised) with builder ``kwargs``."""
    return MODELS.get(name).builder(**kwargs)
