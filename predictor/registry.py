"""A name -> object registry for parts whose names are written into shards and configs.

Adapters, explainers and sources register under the name that goes into shard metadata, so that
a shard says exactly what produced it and a config can name it back; the runtime's pruning
methods register under the name that eval's `methods=` takes.
"""
from __future__ import annotations

import importlib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """`modules`: the modules whose import registers the parts (one per family or method). They are
    imported on the first lookup, not with the registry, so that importing e.g. `predictor.adapters`
    stays light, and every lookup (`get`, `names`, `in`, iteration) sees all of them."""

    def __init__(self, kind: str, modules: tuple[str, ...] = ()):
        self.kind = kind  # e.g. "adapter": used in error messages
        self.modules = tuple(modules)
        self._items: dict[str, T] = {}
        self._loaded = not self.modules

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def _load(self) -> dict[str, T]:
        if not self._loaded:
            for mod in self.modules:  # a failed import propagates and is retried on the next lookup
                importlib.import_module(mod)
            self._loaded = True
        return self._items

    def get(self, name: str) -> T:
        items = self._load()
        if name not in items:
            raise KeyError(f"unknown {self.kind} {name!r}; available: {', '.join(sorted(items)) or '(none)'}")
        return items[name]

    def names(self) -> list[str]:
        return sorted(self._load())

    def __contains__(self, name: str) -> bool:
        return name in self._load()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
