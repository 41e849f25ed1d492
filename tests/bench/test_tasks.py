"""The task registry, its objectives and the seeded benchmark instances.

Oracles are plain Python / numpy loops over the indicator entries, written without the
code under test.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from tests.cases import NAMES, CASES, dist_class, make
from rgbench.bench import tasks


def _indicators_of_support(dist, name, n):
    """Every X of the brute-force support in indicator form, as a set of tuples."""
    support = CASES[name][1](n)
    xs = torch.tensor(sorted(support), dtype=torch.long)
    return {tuple(row) for row in dist.indicator(xs).reshape(len(xs), -1).tolist()}


def test_registry_lists_the_builtin_tasks():
    assert set(tasks.names()) >= {"quadratic", "linear", "match"}
    with pytest.raises(ValueError, match="valid names: .*quadratic"):
        tasks.get("cubic")


@pytest.mark.parametrize("name", NAMES)
def test_quadratic_matches_a_loop_over_entries(name):
    dist = make(name, 4, seed=1)
    objective = tasks.get("quadratic").build(dist, torch.Generator().manual_seed(0))
    x = dist.sample((3, 2), generator=torch.Generator().manual_seed(1))
    ind = dist.indicator(x)
    values = objective(ind)
    assert values.shape == (3, 2)
    target = objective.target.numpy()
    for i, j in itertools.product(range(3), range(2)):
        entries = ind[i, j].numpy()
        expected = sum((a - b) ** 2 for a, b in zip(entries.ravel(), target.ravel()))
        assert values[i, j].item() == pytest.approx(expected)


@pytest.mark.parametrize("name", NAMES)
def test_quadratic_and_match_targets_are_hard_structures(name):
    dist = make(name, 4, seed=2)
    support = _indicators_of_support(dist, name, 4)
    for task_name in ("quadratic", "match"):
        objective = tasks.get(task_name).build(dist, torch.Generator().manual_seed(5))
        assert tuple(objective.target.reshape(-1).tolist()) in support


@pytest.mark.parametrize("name", NAMES)
def test_linear_is_the_inner_product(name):
    dist = make(name, 4, seed=3)
    objective = tasks.get("linear").build(dist, torch.Generator().manual_seed(0))
    assert objective.weights.shape == dist.indicator_event_shape
    x = dist.sample((5,), generator=torch.Generator().manual_seed(2))
    ind = dist.indicator(x)
    expected = [float(np.sum(row * objective.weights.numpy())) for row in ind.numpy()]
    np.testing.assert_allclose(objective(ind).numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_match_is_one_exactly_on_the_target(name):
    dist = make(name, 4, seed=4)
    objective = tasks.get("match").build(dist, torch.Generator().manual_seed(0))
    assert objective.accepts_relaxed is False
    support = CASES[name][1](4)
    xs = torch.tensor(sorted(support), dtype=torch.long)
    ind = dist.indicator(xs)
    values = objective(ind)
    hits = [bool((row == objective.target).all()) for row in ind]
    assert values.tolist() == [1.0 if hit else 0.0 for hit in hits]
    assert sum(hits) == 1


def test_objectives_declare_relaxation_support():
    dist = make("topk", 5, seed=0)
    built = {name: tasks.get(name).build(dist, torch.Generator().manual_seed(0)) for name in tasks.names()}
    assert built["quadratic"].accepts_relaxed and built["linear"].accepts_relaxed
    assert not built["match"].accepts_relaxed
    relaxed = torch.full((5,), 0.4, dtype=torch.float64)
    assert built["quadratic"](relaxed).shape == ()


def test_sst_refuses_the_non_relaxable_objective():
    from rgbench import estimators

    if "sst" not in estimators.names():
        pytest.skip("sst is not registered yet")
    dist = make("topk", 5, seed=0)
    objective = tasks.get("match").build(dist, torch.Generator().manual_seed(0))
    reason = estimators.get("sst", num_samples=2).supports(dist, objective)
    assert reason is not None and "relax" in reason.lower()


@pytest.mark.parametrize("name", ["topk", "kruskal"])
def test_objectives_are_seeded(name):
    dist = make(name, 5, seed=0)
    for task_name in tasks.names():
        task = tasks.get(task_name)
        a = task.build(dist, torch.Generator().manual_seed(7))
        b = task.build(dist, torch.Generator().manual_seed(7))
        param = "weights" if task_name == "linear" else "target"
        assert torch.equal(getattr(a, param), getattr(b, param))
    a = tasks.get("linear").build(dist, torch.Generator().manual_seed(1))
    b = tasks.get("linear").build(dist, torch.Generator().manual_seed(2))
    assert not torch.equal(a.weights, b.weights)


def test_objectives_follow_the_batch():
    dist = make("permutation", 4, batch_shape=(3,), seed=0)
    objective = tasks.get("quadratic").build(dist, torch.Generator().manual_seed(0))
    assert objective.target.shape == (3, 4, 4)
    x = dist.sample((2,), generator=torch.Generator().manual_seed(0))
    assert objective(dist.indicator(x)).shape == (2, 3)


def test_objective_rejects_too_few_axes():
    dist = make("kruskal", 4, seed=0)
    objective = tasks.get("quadratic").build(dist, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="indicator must have at least 2 event axes"):
        objective(torch.zeros(4))


@pytest.mark.parametrize("name", NAMES)
def test_make_instance_is_seeded_and_valid(name):
    cls = dist_class(name)
    a = tasks.make_instance(name, 5, generator=torch.Generator().manual_seed(3), scale=2.0)
    b = tasks.make_instance(name, 5, generator=torch.Generator().manual_seed(3), scale=2.0)
    assert type(a) is cls and torch.equal(a.logits, b.logits)
    assert a.logits.dtype == torch.float64
    if name == "kruskal":
        assert torch.equal(a.logits, a.logits.transpose(-1, -2))
    assert tasks.make_instance(name, 5, batch_shape=(2,)).batch_shape == (2,)


def test_make_instance_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n must be an int >= 2"):
        tasks.make_instance("topk", 1)
    with pytest.raises(ValueError, match="scale must be positive"):
        tasks.make_instance("topk", 4, scale=0.0)
    with pytest.raises(ValueError, match="valid names"):
        tasks.make_instance("hypercube", 4)


def test_task_lists_its_structures():
    for name in tasks.names():
        task = tasks.get(name)
        assert task.summary and task.name == name
        assert task.supports("kruskal") is None  # the built-in tasks serve every structure


@pytest.mark.cuda
@pytest.mark.parametrize("name", NAMES)
def test_instances_and_objectives_live_on_cuda(name):
    dist_class(name)
    gen = torch.Generator(device="cuda").manual_seed(0)
    dist = tasks.make_instance(name, 5, generator=gen, device="cuda")
    for task_name in tasks.names():
        objective = tasks.get(task_name).build(dist, gen)
        x = dist.sample((3,), generator=gen)
        assert objective(dist.indicator(x)).device.type == "cuda"
