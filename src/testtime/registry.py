"""One generic registry with a lister, used for datasets, corruptions, models, losses and methods.

Unknown names fail with the list of valid ones; registering a name twice fails.

Example::

    MODELS = Registry("model")

    @MODELS.register("resnet20")
    def resnet20(**kw): ...

    MODELS.create("resnet20", num_classes=10)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object map with aliases, clear errors and a sorted lister."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, *, aliases: tuple[str, ...] = (), **meta: Any) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (and ``aliases``); ``meta`` is free-form."""

        def deco(obj: T) -> T:
            self.add(name, obj, aliases=aliases, **meta)
            return obj

        return deco

    def add(self, name: str, obj: T, *, aliases: tuple[str, ...] = (), **meta: Any) -> None:
        for n in (name, *aliases):
            if n in self._items or n in self._aliases:
                raise ValueError(f"{self.kind} {n!r} is already registered")
        self._items[name] = obj
        self._meta[name] = dict(meta)
        for a in aliases:
            self._aliases[a] = name

    def canonical(self, name: str) -> str:
        if name in self._items:
            return name
        if name in self._aliases:
            return self._aliases[name]
        valid = ", ".join(self.names())
        raise KeyError(f"unknown {self.kind} {name!r}; valid: {valid}")

    def get(self, name: str) -> T:
        return self._items[self.canonical(name)]

    def meta(self, name: str) -> dict[str, Any]:
        return self._meta[self.canonical(name)]

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        factory = self.get(name)
        return factory(*args, **kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
