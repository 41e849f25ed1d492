"""Where cells are computed: the seam a distributed executor (e.g. Ray) plugs into.

An executor has one method, ``map(function, items)``, yielding ``function(item)`` for every
item *in the order of the items*, lazily: the caller saves each result as it arrives, so an
interruption keeps every finished cell. :class:`LocalExecutor` runs them one after another
in this process (``function`` keeps per-process state, such as the last instance a
:class:`~rgbench.bench.cells.CellRunner` built). A parallel executor must keep the order and
raise the first exception it meets in that order.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Protocol, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Executor(Protocol):
    def map(self, function: Callable[[Item], Result], items: Iterable[Item]) -> Iterator[Result]: ...


class LocalExecutor:
    """Runs every item here, in order, one at a time."""

    def map(self, function: Callable[[Item], Result], items: Iterable[Item]) -> Iterator[Result]:
        for item in items:
            yield function(item)


__all__ = ["Executor", "LocalExecutor"]
