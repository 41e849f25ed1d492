"""Name -> object registries shared by the CLI, the tests and the report labels."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A dict of named entries filled by a decorator, with aliases.

    >>> shapes = Registry("shape")
    >>> @shapes.register("square", aliases=("box",))
    ... class Square: ...
    >>> shapes.get("box") is Square
    True
    >>> Square.name
    'square'

    A registered class gets its canonical name as the class attribute ``name``: the name is
    written once, in the decorator.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            for key in (name, *aliases):
                if key in self._entries or key in self._aliases:
                    raise ValueError(f"{self.kind} name {key!r} is already registered")
            self._entries[name] = obj
            if isinstance(obj, type):
                obj.name = name
            for alias in aliases:
                self._aliases[alias] = name
            return obj

        return decorator

    def unregister(self, name: str) -> T:
        """Remove ``name`` (a registered name, not an alias) and its aliases; returns the
        entry. For entries registered for a while, e.g. by a test."""
        if name not in self._entries:
            raise ValueError(f"unregister: {self.kind} {name!r} is not registered (aliases cannot be removed alone)")
        for alias in [alias for alias, target in self._aliases.items() if target == name]:
            del self._aliases[alias]
        return self._entries.pop(name)

    def canonical(self, name: str) -> str:
        """The registered name for `name` or one of its aliases."""
        key = self._aliases.get(name, name)
        if key not in self._entries:
            valid = ", ".join(self.names(with_aliases=True))
            raise ValueError(f"unknown {self.kind} {name!r}; valid names: {valid}")
        return key

    def get(self, name: str) -> T:
        return self._entries[self.canonical(name)]

    def names(self, with_aliases: bool = False) -> list[str]:
        names = list(self._entries)
        if with_aliases:
            names += [f"{alias} (= {target})" for alias, target in self._aliases.items()]
        return names

    def __contains__(self, name: str) -> bool:
        return self._aliases.get(name, name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)
