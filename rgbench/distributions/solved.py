"""What a kernel established about the traces it returned, kept until those tensors change.

Scoring a trace needs facts that the algorithm had at hand when it produced it but that cost
a sequential replay to recover from the trace alone (Kruskal's merge order, CLE's contraction
structure). A :class:`SolvedTraces` keeps them by tensor identity and version counter: an
entry dies with its tensors, and any in-place change to them bumps ``_version`` and voids it,
so a trace that was edited, copied or built by hand always takes the full path.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch


def _parts(trace) -> tuple[torch.Tensor, ...]:
    return (trace,) if isinstance(trace, torch.Tensor) else tuple(trace)


def _versions(parts: tuple[torch.Tensor, ...]) -> tuple[int, ...] | None:
    try:
        return tuple(part._version for part in parts)
    except RuntimeError:  # inference tensors have no version counter: never kept
        return None


class SolvedTraces:
    """Facts about traces (a tensor or a tuple of tensors), keyed by the tensors themselves."""

    def __init__(self):
        self._entries: dict[tuple[int, ...], tuple] = {}

    def add(self, trace, facts: Any) -> None:
        parts = _parts(trace)
        versions = _versions(parts)
        if versions is None:
            return
        key = tuple(map(id, parts))

        def drop(_, key=key):
            self._entries.pop(key, None)

        refs = tuple(weakref.ref(part, drop) for part in parts)
        self._entries[key] = (refs, versions, facts)

    def get(self, trace) -> Any | None:
        """The facts stored for exactly these tensors, unchanged since; None otherwise."""
        parts = _parts(trace)
        entry = self._entries.get(tuple(map(id, parts)))
        if entry is None:
            return None
        refs, versions, facts = entry
        if all(ref() is part for ref, part in zip(refs, parts)) and versions == _versions(parts):
            return facts
        return None
