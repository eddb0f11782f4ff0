"""Package attributes imported on first use (PEP 562), so that a package whose registries are
torch-free (``pellucid.train``, ``pellucid.robust``) loads no torch until a torch-using name is
read."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_attributes(package: str, names: dict[str, str], exported: list[str]
                    ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``names`` maps an attribute to the module
    (absolute) that defines it; any other public name is tried as a submodule
    (``pellucid.robust.checks``); ``exported``: the package's ``__all__``."""

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        if not name.startswith("_"):  # a submodule not imported yet
            try:
                return importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"{package}.{name}":
                    raise
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        module = importlib.import_module(package)
        return sorted({*vars(module), *exported})

    return __getattr__, __dir__
