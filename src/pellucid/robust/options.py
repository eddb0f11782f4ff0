"""The options of the attacks: how they are declared and checked, and every attack's options
dataclass, in a module that imports no torch (``pellucid evaluate --help`` lists them).

An attack's options are a frozen dataclass deriving from :class:`AttackOptions`, whose fields are
made with :func:`attack_option` (help text, valid values, and how help texts state the default);
see :mod:`pellucid.robust.attacks` for how attacks take them. The classes of the attacks in
:mod:`pellucid.robust.attacks` are these ones. Those of the ART attacks, of pellucid's APGD
attacks and FAB-T and of AutoAttack (:mod:`pellucid.robust.art_backend`,
:mod:`pellucid.robust.apgd_attacks`, :mod:`pellucid.robust.fab`, :mod:`pellucid.robust.autoattack`)
are declared here too, for :data:`pellucid.robust.catalogue.ATTACKS` to list them; those modules
still define the classes their attacks use, and registering an attack fails unless its class
declares the same fields (names, types, defaults, help and limits) as the one declared here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from pellucid._config import CheckedConfig, config_option
from pellucid.errors import ConfigError, InvalidInputError

__all__ = ["APGDNativeOptions", "APGDOptions", "APGDTargetedOptions", "AdamPGDOptions", "AttackOptions",
           "BoundaryOptions", "COMMON_ARGS", "DeepFoolOptions", "FABTargetedOptions", "FGMOptions",
           "FGSMOptions", "L2BIMOptions", "PGDOptions", "SquareOptions", "attack_option",
           "check_options", "default_text", "option_values", "restarts_option", "same_fields",
           "step_size_option", "steps_option", "target_classes_option"]

# The keyword arguments every attack accepts besides its options (see pellucid.robust.attacks).
COMMON_ARGS = ("eps", "norm", "value_range", "generator", "progress", "batch_size", "log")


def attack_option(default: Any, help: str, *, default_text: str | None = None, **limits: Any):
    """A field of an attack's options dataclass: :func:`pellucid._config.config_option` (help
    text and valid values) plus ``default_text``, what a ``None`` default means in help texts
    (``"eps / 3"``)."""
    meta = dict(config_option(default, help, **limits).metadata)
    if default_text is not None:
        meta["default_text"] = default_text
    return dataclasses.field(default=default, metadata=meta)


def default_text(f: dataclasses.Field) -> str:
    """How help texts state the default of the option field ``f``."""
    return f.metadata.get("default_text", str(f.default))


@dataclass(frozen=True)
class AttackOptions(CheckedConfig):
    """Base of every attack's options dataclass: each field is checked against its annotated type
    and the limits of its :func:`attack_option` when the options are built (``None``, the
    attack's own default such as a step of eps / 3, meets any limit)."""


def option_values(options: AttackOptions) -> dict[str, Any]:
    """``{field: value}`` of an options dataclass (values as they are, not copied)."""
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}


def check_options(attack: str, options_type: type[AttackOptions],
                  values: Mapping[str, Any] | AttackOptions | None) -> AttackOptions:
    """``values`` as ``options_type`` (missing options take their defaults); an unknown option or
    a bad value raises :class:`InvalidInputError` (one line) naming ``attack`` and the option."""
    if isinstance(values, options_type):
        return values
    values = dict(values or {})
    names = [f.name for f in dataclasses.fields(options_type)]
    unknown = [k for k in values if k not in names]
    if unknown:
        raise InvalidInputError(
            f"attack {attack!r} has no option {unknown[0]!r}; its options: {', '.join(names) or 'none'}"
            f" (besides the arguments every attack takes: {', '.join(COMMON_ARGS)})")
    try:
        return options_type(**values)
    except ConfigError as e:
        raise ConfigError(f"{attack}: {e}") from None


# Fields shared by several attacks: the same name, help and limits everywhere (one CLI flag each).
def steps_option(default: int):
    return attack_option(default, "iterations", min=1)


def step_size_option():
    return attack_option(None, "PGD/APGD step", default_text="eps / 3", above=0)


def restarts_option():
    return attack_option(1, "restarts", min=1)


def target_classes_option():
    return attack_option(
        9, "targets of APGD-T and FAB-T: the highest non-true classes of the clean image (at most "
        "classes - 1)", min=1)


# --- pellucid.robust.attacks ------------------------------------------------------------------

@dataclass(frozen=True)
class PGDOptions(AttackOptions):
    steps: int = steps_option(40)
    step_size: float | None = step_size_option()
    random_start: bool = attack_option(True, "PGD starts uniformly in the eps-ball (else at x)")


@dataclass(frozen=True)
class FGSMOptions(AttackOptions):
    """FGSM has no options: one step of size eps."""


@dataclass(frozen=True)
class FGMOptions(AttackOptions):
    """FGM has no options: one L2 step of length eps."""


@dataclass(frozen=True)
class AdamPGDOptions(AttackOptions):
    steps: int = steps_option(40)
    # the help and limits of every step_size (one CLI flag); only the default differs: Adam's L2
    # step is per coordinate (about alpha sign(g), L2 length alpha sqrt(d)), so foolbox's eps / 40
    step_size: float | None = attack_option(None, "PGD/APGD step", default_text="eps / 3; l2: eps / 40",
                                            above=0)
    random_start: bool = attack_option(True, "PGD starts uniformly in the eps-ball (else at x)")


@dataclass(frozen=True)
class L2BIMOptions(AttackOptions):
    steps: int = steps_option(10)
    step_size: float | None = attack_option(None, "PGD/APGD step", default_text="eps / 5", above=0)


# --- declared for pellucid.robust.art_backend (which defines its own, the same) -----------------

@dataclass(frozen=True)
class APGDOptions(AttackOptions):
    steps: int = steps_option(100)
    step_size: float | None = step_size_option()
    restarts: int = restarts_option()


@dataclass(frozen=True)
class SquareOptions(AttackOptions):
    """Options of both Square attacks, ART's ``square`` and pellucid's ``square-native``."""

    queries: int = attack_option(5000, "Square queries (per restart)", min=1)
    restarts: int = restarts_option()
    p_init: float = attack_option(0.8, "Square's initial share of pixels per window", above=0, max=1)


@dataclass(frozen=True)
class DeepFoolOptions(AttackOptions):
    steps: int = steps_option(100)
    overshoot: float = attack_option(1e-3, "DeepFool's overshoot past the boundary", min=0)


@dataclass(frozen=True)
class BoundaryOptions(AttackOptions):
    steps: int = steps_option(1000)


# --- declared for pellucid.robust.apgd_attacks (which defines its own, the same) ----------------

@dataclass(frozen=True)
class APGDNativeOptions(AttackOptions):
    """Options of ``apgd-ce-native`` and ``apgd-dlr-native`` (the step is APGD's own: 2 eps,
    halved at the checkpoints, so there is no ``step_size``)."""

    steps: int = steps_option(100)
    restarts: int = restarts_option()


@dataclass(frozen=True)
class APGDTargetedOptions(AttackOptions):
    steps: int = steps_option(100)
    restarts: int = restarts_option()
    n_target_classes: int = target_classes_option()


# --- declared for pellucid.robust.fab (which uses this one) ----------------------------------------

@dataclass(frozen=True)
class FABTargetedOptions(AttackOptions):
    """Options of ``fab-t-native``, FAB-T (Croce & Hein 2020) as AutoAttack's "standard" version
    runs it: 9 targets, 1 restart, 100 iterations, alpha_max 0.1, eta 1.05, beta 0.9."""

    steps: int = steps_option(100)
    restarts: int = restarts_option()
    n_target_classes: int = target_classes_option()
    alpha_max: float = attack_option(0.1, "FAB's largest weight of the step taken from the clean "
                                     "image", min=0, max=1)
    eta: float = attack_option(1.05, "FAB's overshoot: each projection step is stretched by eta",
                               min=1)
    beta: float = attack_option(0.9, "FAB's backward step: an adversarial iterate x becomes "
                                "(1 - beta) x_clean + beta x", above=0, max=1)


def same_fields(a: type, b: type) -> bool:
    """Whether the options dataclasses ``a`` and ``b`` declare the same fields: names, annotations,
    defaults, help texts and limits, in the same order."""
    def key(options: type) -> list:
        return [(f.name, str(f.type), f.default, f.default_factory, dict(f.metadata))
                for f in dataclasses.fields(options)]

    return a is b or key(a) == key(b)
