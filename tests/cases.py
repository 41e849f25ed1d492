"""The table of example instances that drives the generic distribution tests."""

from __future__ import annotations

import pytest
import torch

from rgbench import distributions
from tests import oracles

#: registry name -> (extra constructor args for size n, brute-force support for size n)
CASES = {
    "topk": (lambda n: {"k": max(1, n // 2)}, lambda n: oracles.support_topk(n, max(1, n // 2))),
    "permutation": (lambda n: {}, oracles.support_permutation),
    "matching": (lambda n: {}, oracles.support_matching),
    "kruskal": (lambda n: {}, oracles.support_kruskal),
    "cle": (lambda n: {"root": 0}, lambda n: oracles.support_cle(n, root=0)),
    "binary-tree": (lambda n: {}, oracles.support_binary_tree),
}
NAMES = list(CASES)


def dist_class(name):
    if name not in distributions.DISTRIBUTIONS:
        pytest.skip(f"{name} is not implemented yet")
    return distributions.get(name)


def make(name, n, batch_shape=(), seed=0, dtype=torch.float64, scale=1.0, **overrides):
    cls = dist_class(name)
    generator = torch.Generator().manual_seed(seed)
    logits = cls.random_logits(n, batch_shape, scale=scale, generator=generator, dtype=dtype)
    args = {**CASES[name][0](n), **overrides}
    return cls(logits, **args)


def flat_trace(trace):
    """A trace (tensor or tuple of tensors) with leading axis N -> list of N hashable keys."""
    parts = [trace] if isinstance(trace, torch.Tensor) else list(trace)
    rows = torch.cat([p.reshape(p.shape[0], -1).long() for p in parts], dim=1)
    return [tuple(r) for r in rows.tolist()]


def traces_equal(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return all(torch.equal(x, y) for x, y in zip(a, b))


def x_key(x):
    return tuple(tuple(r) if isinstance(r, list) else r for r in x.tolist())
