"""The authors' toy optimisation objectives, written on the indicator form of X.

``TOY_LOSSES`` holds one :class:`ToyLoss` record per structure: its loss and its known
optimum at dimension n, which the optimisation should approach
(docs/design.md §6.1). Every function takes the indicator ``[..., n, n]`` that
``dist.indicator(x)`` returns and gives one loss per sample, shape ``[...]``:

================  ===========================  ======================================  =========
registry name     indicator                     loss                                    optimum
================  ===========================  ======================================  =========
``matching``      ``[row, col]``               -(rows matched to their own column)      -n
``binary-tree``   ``[parent, child]``          -(height in nodes)                       -n
``cle``           ``[parent, child]``          -(largest out-degree)                    -(n-1)
``kruskal``       symmetric adjacency          -(largest degree)                        -(n-1)
================  ===========================  ======================================  =========

The spanning-tree loss replaces the authors' broken one (docs/design.md §7: it indexed edges where
it meant endpoints). The height is discrete (a Boolean transitive closure), so the
binary-tree loss refuses relaxed input (``accepts_relaxed = False``); the others are
piecewise linear in the indicator and accept SST's fractional one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from rgbench.registry import Registry

Loss = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ToyLoss:
    """The toy objective of one structure: ``loss(indicator)`` and ``optimum(n)``."""

    structure: str
    loss: Loss
    optimum: Callable[[int], float]


TOY_LOSSES: Registry[ToyLoss] = Registry("toy loss")


def _toy_loss(structure: str, optimum: Callable[[int], float], aliases: tuple[str, ...] = ()):
    """Register the decorated loss with its optimum under ``structure``."""

    def decorator(loss: Loss) -> Loss:
        TOY_LOSSES.register(structure, aliases)(ToyLoss(structure, loss, optimum))
        return loss

    return decorator


def _check_square(indicator: torch.Tensor, name: str) -> None:
    if not isinstance(indicator, torch.Tensor) or indicator.dim() < 2 or indicator.shape[-1] != indicator.shape[-2]:
        got = tuple(indicator.shape) if isinstance(indicator, torch.Tensor) else type(indicator).__name__
        raise ValueError(f"{name}: indicator must have shape (..., n, n), got {got}")


@_toy_loss("matching", optimum=lambda n: -float(n))
def matching_loss(indicator: torch.Tensor) -> torch.Tensor:
    """-(number of rows matched to their own column) = -trace(indicator); optimum -n.

    Cost O(n) per sample.
    """
    _check_square(indicator, "matching_loss")
    return -indicator.diagonal(dim1=-2, dim2=-1).sum(-1)


@_toy_loss("binary-tree", optimum=lambda n: -float(n))
def binary_tree_loss(indicator: torch.Tensor) -> torch.Tensor:
    """-(height of the tree counted in nodes); optimum -n (a chain).

    With A[parent, child] the adjacency, R = I + A and its closure R* (ceil(log2 n)
    Boolean squarings: paths of up to n - 1 edges), R*[i, j] = 1 iff i is j or an ancestor
    of j. The height in nodes is the deepest node's ancestor count, itself included:
    max_j sum_i R*[i, j]. Cost O(n^3 log n) per sample.
    """
    _check_square(indicator, "binary_tree_loss")
    n = indicator.shape[-1]
    eye = torch.eye(n, dtype=indicator.dtype, device=indicator.device)
    reach = ((indicator != 0).to(indicator.dtype) + eye).clamp(max=1)
    for _ in range(max(1, math.ceil(math.log2(n)))):
        reach = (reach @ reach).clamp(max=1)
    return -reach.sum(-2).amax(-1)


binary_tree_loss.accepts_relaxed = False


@_toy_loss("cle", optimum=lambda n: -float(n - 1), aliases=("arborescence",))
def arborescence_loss(indicator: torch.Tensor) -> torch.Tensor:
    """-(largest out-degree of any vertex) = -max_i sum_j A[i, j]; optimum -(n-1) (every edge
    leaves the root). Cost O(n^2) per sample."""
    _check_square(indicator, "arborescence_loss")
    return -indicator.sum(-1).amax(-1)


@_toy_loss("kruskal", optimum=lambda n: -float(n - 1), aliases=("spanning-tree",))
def spanning_tree_loss(indicator: torch.Tensor) -> torch.Tensor:
    """-(largest degree of any vertex) of the symmetric adjacency; optimum -(n-1) (a star).
    Cost O(n^2) per sample."""
    _check_square(indicator, "spanning_tree_loss")
    return -indicator.sum(-1).amax(-1)


def toy_loss(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The toy loss of a structure by registry name (``ValueError`` listing the valid ones)."""
    return TOY_LOSSES.get(name).loss


def toy_optimum(name: str, n: int) -> float:
    """The known optimum of a structure's toy loss at dimension ``n``."""
    return TOY_LOSSES.get(name).optimum(n)


def toy_structures() -> list[str]:
    return TOY_LOSSES.names()
