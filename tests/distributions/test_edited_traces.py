"""A trace edited behind torch's back is scored like a fresh copy of it.

Writes through ``.numpy()`` do not bump a tensor's version counter, so any cache keyed on
tensor identity and version would score the edited trace with stale facts (an all -1
binary tree scored -1.19e-07, a CLE trace with two draws swapped kept its old log P(T)).
Every score must equal that of ``clone()``, or both must raise.
"""

from __future__ import annotations

import pytest
import torch

from tests.cases import NAMES, make


def _parts(trace):
    return [trace] if isinstance(trace, torch.Tensor) else list(trace)


def _clone(trace):
    return trace.clone() if isinstance(trace, torch.Tensor) else type(trace)(*(p.clone() for p in trace))


def _outcome(dist, trace):
    try:
        return dist.trace_log_prob(trace)
    except ValueError as error:
        return str(error)


def _swap_first_two(array):
    array[[0, 1]] = array[[1, 0]].copy()


def _reverse(array):
    array[:] = array[::-1].copy()


EDITS = {"reverse": _reverse, "all -1": lambda array: array.fill(-1), "first two swapped": _swap_first_two}


@pytest.mark.parametrize("edit", list(EDITS))
@pytest.mark.parametrize("name", NAMES)
def test_numpy_edits_are_seen(name, edit):
    dist = make(name, 6, seed=31)
    trace = dist.sample_with_trace(generator=torch.Generator().manual_seed(2)).trace
    before = dist.trace_log_prob(trace)
    for part in _parts(trace):
        if part.dtype == torch.long:
            EDITS[edit](part.numpy())  # in place, and invisible to the version counter
    got, fresh = _outcome(dist, trace), _outcome(dist, _clone(trace))
    if isinstance(fresh, str):
        assert got == fresh
    else:
        assert isinstance(got, torch.Tensor) and torch.equal(got, fresh)
    assert isinstance(before, torch.Tensor)
