"""The speed harness: wall-clock of the building blocks and of each estimator.

For every (device, dist, n) of a :class:`~rgbench.bench.grid.SpeedGrid`, on one batch
of B independent instances (seeded logits, the task's objective), it times

* ``sample``: ``sample_with_trace`` (noise, the algorithm, the trace);
* ``trace_log_prob``: log P(T) of a sampled trace and its backward pass to the logits;
* ``noise_given_trace``: one draw of E | T;
* ``estimate:<name>``: one gradient estimate with K samples per instance
  (``num_replicates=1``; critics untrained, which does not change the cost),

each ``repeats`` times after a warm-up call, synchronising the device around every call:
median, quartiles and an order-statistic 95% interval of the median, the median per
instance, and the CUDA peak memory. Unsupported estimators give skipped rows with the
reason.
"""

from __future__ import annotations

from typing import Callable

import pandas as pd
import torch
from tqdm.auto import tqdm

from rgbench import estimators
from rgbench.bench import tasks
from rgbench.bench import timing
from rgbench.bench.grid import DTYPES, SpeedGrid
from rgbench.bench.progress import CellStore
from rgbench.bench.results import SPEED_SCHEMA, Results, make_metadata
from rgbench.bench.store import Interrupted, check_stop
from rgbench.bench.seeds import derive_seed, generator
from rgbench.bench.cells import describe_error

BUILDING_BLOCKS = ("sample", "trace_log_prob", "noise_given_trace")


def _operations(grid: SpeedGrid, dist, objective, gen) -> list[tuple[str, Callable[[], object] | str]]:
    """(name, zero-argument callable or the reason it is skipped) for every operation."""
    trace = dist.sample_with_trace(generator=gen).trace
    leaf = dist.logits.detach().clone().requires_grad_()
    scored = dist.with_logits(leaf)

    def log_prob_backward():
        scored.trace_log_prob(trace).sum().backward()
        leaf.grad = None

    ops: list[tuple[str, Callable[[], object] | str]] = [
        ("sample", lambda: dist.sample_with_trace(generator=gen)),
        ("trace_log_prob", log_prob_backward),
        ("noise_given_trace", lambda: dist.noise_given_trace(trace, generator=gen)),
    ]
    for name in grid.estimators:
        options = grid.estimator_options.get(name, {})
        try:
            estimator = estimators.get(name, num_samples=grid.samples, **options)
        except ValueError as error:
            ops.append((f"estimate:{name}", str(error)))
            continue
        reason = estimator.supports(dist, objective)
        if reason is not None:
            ops.append((f"estimate:{name}", reason))
            continue
        ops.append((f"estimate:{name}", lambda e=estimator: e.estimate(dist, objective, num_replicates=1, generator=gen)))
    return ops


def operation_names(grid: SpeedGrid) -> list[str]:
    """The operations timed on each instance, in order (one saved unit each)."""
    return [*BUILDING_BLOCKS, *(f"estimate:{name}" for name in grid.estimators)]


def speed_total(grid: SpeedGrid) -> int:
    """How many operation rows a full run has."""
    return len(grid.devices) * len(grid.dists) * len(grid.sizes) * len(operation_names(grid))


def run_speed(grid: SpeedGrid, *, progress: bool = False, command: str | None = None,
              saved: CellStore | None = None) -> Results:
    """Time every operation of ``grid``; a tqdm bar over (device, dist, n) when ``progress``.

    With ``saved``, operation rows already there are kept and each new one is saved as soon
    as it is timed; ``store.check_stop`` runs between operations.
    """
    rows = []
    names = operation_names(grid)
    instances = [(device, dist, n) for device in grid.devices for dist in grid.dists for n in grid.sizes]
    for number, (device, dist_name, n) in enumerate(
            tqdm(instances, desc="speed", unit="instance", disable=not progress, leave=False)):
        keys = [{"device": device, "dist": dist_name, "n": n, "operation": name} for name in names]
        first = number * len(names)
        done = [saved.get(first + i, key) if saved is not None else None for i, key in enumerate(keys)]
        if all(row is not None for row in done):
            rows += done
            continue
        check_stop()
        base = {
            "dist": dist_name, "n": n, "batch": grid.batch, "K": grid.samples, "task": grid.task, "device": device,
            "dtype": grid.dtype, "seed": grid.seed, "repeats": grid.repeats,
        }
        try:
            ops = _instance_operations(grid, device, dist_name, n)
        except Interrupted:
            raise
        except Exception as error:  # e.g. a size too large to allocate: failed rows, not a crash
            reason = f"the instance could not be built: {describe_error(error)}"
            ops = [(name, _Failed(reason)) for name in names]
        for i, (operation, call) in enumerate(ops):
            if done[i] is not None:
                rows.append(done[i])
                continue
            check_stop()
            row = _time_operation({**base, "operation": operation, "status": "skipped", "reason": ""}, call, grid,
                                  device)
            rows.append(saved.put(first + i, keys[i], row) if saved is not None else row)
    frame = pd.DataFrame(rows, columns=None if rows else list(SPEED_SCHEMA))
    for column in ("time_median_s", "time_q25_s", "time_q75_s", "time_lo_s", "time_hi_s", "per_instance_us",
                   "peak_memory_mb"):
        if column not in frame.columns:
            frame[column] = float("nan")
    metadata = make_metadata("speed", grid.as_dict(), grid.devices[0], grid.seed, command)
    if saved is not None:
        metadata["run_id"] = saved.run_id
    return Results("speed", frame, metadata)


class _Failed(str):
    """The reason an operation failed before it could be timed."""


def _instance_operations(grid: SpeedGrid, device: str, dist_name: str, n: int):
    """The seeded batch of instances and its operations (none when the task cannot serve it)."""
    torch.manual_seed(derive_seed(grid.seed, dist_name, n, "speed"))
    gen = generator(derive_seed(grid.seed, dist_name, n, grid.task, "speed"), device)
    dist = tasks.make_instance(
        dist_name, n, batch_shape=(grid.batch,), scale=grid.logit_scale, generator=gen, dtype=DTYPES[grid.dtype],
        device=device,
    )
    task = tasks.get(grid.task)
    task_reason = task.supports(dist_name)
    objective = None if task_reason else task.build(dist, gen)
    return _operations(grid, dist, objective, gen) if task_reason is None else []


def _time_operation(row: dict, call, grid: SpeedGrid, device: str) -> dict:
    """The row of one operation: its timings, or why it is skipped or failed."""
    if isinstance(call, _Failed):
        return {**row, "status": "failed", "reason": str(call)}
    if isinstance(call, str):
        return {**row, "reason": call}
    start_memory, read_memory = timing.peak_memory_tracker(device)
    start_memory()
    try:
        times = timing.time_calls(call, grid.repeats, device)
    except Interrupted:
        raise
    except NotImplementedError as error:
        return {**row, "reason": str(error)}
    except Exception as error:  # record and carry on: one bug must not lose the run
        return {**row, "status": "failed", "reason": describe_error(error)}
    summary = timing.summarize(times)
    return {
        **row, "status": "ok", "time_median_s": summary.median, "time_q25_s": summary.q25,
        "time_q75_s": summary.q75, "time_lo_s": summary.lo, "time_hi_s": summary.hi,
        "per_instance_us": summary.median / grid.batch * 1e6, "peak_memory_mb": read_memory(),
    }
