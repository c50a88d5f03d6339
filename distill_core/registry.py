"""Registries: components are looked up by the names a YAML config uses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from distill_core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object table; ``@REGISTRY.register("name")`` adds one."""

    def __init__(self, kind: str, config_key: str) -> None:
        self.kind = kind
        self.config_key = config_key
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str, *, key: str | None = None) -> T:
        """The object registered as ``name``; ``ConfigError`` naming the config key (``key``, by
        default the registry's own) and the valid names if there is none."""
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; set {key or self.config_key} to one of: "
                + ", ".join(sorted(self._items))
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
