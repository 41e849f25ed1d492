"""The paper's Algorithm 2 (stop / split / map / combine) as a plain, readable reference.

This module is the executable specification of every structure in rgbench. A structure
describes one recursion step through four small methods on a :class:`Recursion`; the
generic functions below then give, for one unbatched instance,

* :func:`run` - the deterministic algorithm on given utilities E (Algorithm 2),
* :func:`trace_log_prob` - log P(T) = sum over draws of logits[t] - logsumexp(logits[P])
  (Algorithm 3),
* :func:`enumerate_traces` - every trace with its probability, by branching over each
  draw's candidates (the ground truth for exact gradients).

Keys are flat indices into ``logits.reshape(-1)``. Each step applies the Exponential-Min
trick on one or more disjoint candidate sets P_1..P_m: T_i = argmin_{j in P_i} E_j, then
E_j -= E_{T_i} for j in P_i. Keys of the pool that are in no candidate set this step are
left untouched (in CLE these are the nodes that re-pick their edge with reduced value 0).
The recursion is written as a loop, so depth is never a stack problem; f_combine is folded
into :meth:`Recursion.finish`, which builds X from the accumulated state once f_stop holds.

The fast batched kernels in the structure modules must agree with these functions exactly;
the tests check that on identical noise.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from itertools import product
from typing import Any, Hashable, NamedTuple, Sequence

import torch

State = Any


class Draw(NamedTuple):
    """One Exponential-Min step on one candidate set: ``chosen`` is the argmin key."""

    candidates: tuple[int, ...]
    chosen: int


class Recursion(ABC):
    """One structure's recursion for one instance; subclasses fill in the four steps.

    ``usable`` is the set of keys the structure may ever choose (finite logits, off the
    diagonal, ...); subclasses use it to build their candidate sets.
    """

    def __init__(self, usable: Sequence[int]):
        self.usable = frozenset(int(key) for key in usable)

    @abstractmethod
    def initial(self) -> State:
        """The state (K, R) of the top-level call."""

    @abstractmethod
    def stop(self, state: State) -> bool:
        """f_stop: whether the recursion ends here."""

    @abstractmethod
    def split(self, state: State) -> list[tuple[int, ...]]:
        """f_split: disjoint candidate sets, each non-empty, in a fixed order."""

    @abstractmethod
    def map(self, state: State, picks: list[int]) -> State:
        """f_map: the reduced problem's state given this step's argmins."""

    @abstractmethod
    def finish(self, state: State) -> Hashable:
        """f_combine folded over the recursion: X from the final state."""


def run(recursion: Recursion, noise: Sequence[float]) -> tuple[Hashable, list[Draw]]:
    """Algorithm 2 on utilities ``noise`` (flat, indexed by key): returns X and the draws."""
    values = {key: float(noise[key]) for key in recursion.usable}
    state, draws = recursion.initial(), []
    while not recursion.stop(state):
        picks = []
        for candidates in recursion.split(state):
            chosen = min(candidates, key=values.__getitem__)
            minimum = values[chosen]
            for key in candidates:  # the Exponential-Min trick: survivors stay Exp(rate)
                values[key] -= minimum
            picks.append(chosen)
            draws.append(Draw(tuple(candidates), chosen))
        state = recursion.map(state, picks)
    return recursion.finish(state), draws


def trace_log_prob(logits: torch.Tensor, draws: Sequence[Draw]) -> torch.Tensor:
    """Algorithm 3: sum over draws of logits[chosen] - logsumexp(logits[candidates])."""
    flat = logits.reshape(-1)
    total = flat.new_zeros(())
    for draw in draws:
        candidates = torch.tensor(draw.candidates, device=flat.device)
        total = total + flat[draw.chosen] - torch.logsumexp(flat[candidates], dim=0)
    return total


def enumerate_traces(recursion: Recursion, limit: int = 1_000_000) -> list[tuple[list[Draw], Hashable]]:
    """Every trace (as its list of draws) with its X, by branching over each step's argmins.

    Raises ``ValueError`` once more than ``limit`` partial traces are alive, so a too-large
    instance fails fast instead of exhausting memory.
    """
    finished: list[tuple[list[Draw], Hashable]] = []
    frontier: list[tuple[State, list[Draw]]] = [(recursion.initial(), [])]
    while frontier:
        state, draws = frontier.pop()
        if recursion.stop(state):
            finished.append((draws, recursion.finish(state)))
            continue
        sets = recursion.split(state)
        for picks in product(*sets):
            step = [Draw(tuple(c), p) for c, p in zip(sets, picks)]
            frontier.append((recursion.map(state, list(picks)), draws + step))
        if len(frontier) + len(finished) > limit:
            raise ValueError(f"enumeration exceeds {limit} traces; use a smaller instance")
    finished.reverse()  # depth-first from the back: restore the natural order
    return finished
