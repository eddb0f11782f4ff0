"""A tiny name -> factory registry shared by models, attacks, recipes and explainers.

The CLI, the app, the benchmarks and the smoke tests all list and build things through these
registries, so adding an entry in one place makes it available everywhere.

Listing a registry must not cost what building its entries costs (``pellucid evaluate --help``
lists every attack with its options; the attacks need torch). So an entry can be *declared*
first, by name, summary and ``info`` (what describing it takes, e.g. an attack's options
dataclass), with the module that registers it: :meth:`Registry.declarations` lists the entries
without importing anything, :meth:`Registry.get` and :meth:`Registry.entries` import the declared
module on first use. An entry can also hold a :class:`LazyFunction`, a ``"module:function"``
imported when it is called.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, TypeVar

from pellucid.errors import UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    summary: str


@dataclass(frozen=True)
class Declaration:
    """An entry known before its object is built: ``name``, ``summary``, ``info`` (see the
    registry's ``info``) and ``module``, whose import registers the object."""

    name: str
    summary: str
    module: str
    info: Any = None


class LazyFunction:
    """``"module:function"``, imported when called, with ``args`` put before the call's own:
    ``LazyFunction("pkg.mod:train", "lenet")(cfg, out)`` is ``pkg.mod.train("lenet", cfg, out)``.
    A registry entry that runs code with heavy imports holds one, so listing it imports nothing."""

    __slots__ = ("target", "args")

    def __init__(self, target: str, *args: Any) -> None:
        module, sep, name = target.partition(":")
        if not (module and sep and name):
            raise ValueError(f"LazyFunction needs 'module:function', got {target!r}")
        self.target, self.args = target, args

    def resolve(self) -> Callable[..., Any]:
        """The function itself (its module imported)."""
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*self.args, *args, **kwargs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LazyFunction) and (self.target, self.args) == (other.target, other.args)

    def __hash__(self) -> int:
        return hash((self.target, self.args))

    def __repr__(self) -> str:
        return f"LazyFunction({', '.join(map(repr, (self.target, *self.args)))})"


class Registry(Generic[T]):
    """Ordered mapping ``name -> object`` with helpful errors for unknown names.

    ``info(obj)`` is what :meth:`declarations` reports of a registered object (default ``None``);
    ``check(declaration, obj)`` is called when ``obj`` completes a declared entry and raises if
    ``obj`` is not what was declared (the summaries must match in any case).
    """

    def __init__(self, kind: str, *, info: Callable[[T], Any] | None = None,
                 check: Callable[[Declaration, T], None] | None = None) -> None:
        self.kind = kind
        self._info, self._check = info, check
        self._entries: dict[str, Entry[T] | Declaration] = {}

    def declare(self, name: str, *, module: str, summary: str, info: Any = None) -> None:
        """Reserve ``name`` (its place in the order, its summary and ``info``) for the object that
        importing ``module`` registers."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = Declaration(name, summary, module, info)

    def register(self, name: str, summary: str = "") -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` adds the decorated object under ``name``
        (completing its declaration, if it has one)."""

        def add(obj: T) -> T:
            doc = summary or (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
            current = self._entries.get(name)
            if isinstance(current, Declaration):
                if doc != current.summary:
                    raise ValueError(f"{self.kind} {name!r} is registered with the summary {doc!r}, "
                                     f"declared with {current.summary!r}")
                if self._check is not None:
                    self._check(current, obj)
            elif current is not None:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, obj, doc)  # a declared name keeps its place
            return obj

        return add

    def _entry(self, name: str) -> Entry[T]:
        try:
            entry = self._entries[name]
        except KeyError:
            known = ", ".join(self._entries) or "none"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}") from None
        if isinstance(entry, Declaration):
            importlib.import_module(entry.module)
            entry = self._entries[name]
            if isinstance(entry, Declaration):
                raise RuntimeError(f"{entry.module} does not register the {self.kind} {name!r} "
                                   "declared in it")
        return entry

    def get(self, name: str) -> T:
        return self._entry(name).obj

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def entries(self) -> list[Entry[T]]:
        """Every entry, in order (importing the modules of the declared ones)."""
        return [self._entry(name) for name in list(self._entries)]

    def declarations(self) -> list[Declaration]:
        """Name, summary and info of every entry, in order, without importing anything (the
        ``module`` of a registered entry is its object's)."""
        out = []
        for name, entry in list(self._entries.items()):
            if isinstance(entry, Entry):
                entry = Declaration(name, entry.summary, getattr(entry.obj, "__module__", ""),
                                    self._info(entry.obj) if self._info is not None else None)
            out.append(entry)
        return out
