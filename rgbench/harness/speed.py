"""The speed harness: wall-clock of the building blocks and of each estimator.

For every (device, dist, n) of a :class:`~rgbench.harness.grid.SpeedGrid`, on one batch
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

from rgbench import estimators, tasks
from rgbench.harness import timing
from rgbench.harness.grid import DTYPES, SpeedGrid
from rgbench.harness.results import Results, make_metadata
from rgbench.harness.seeds import derive_seed, generator
from rgbench.harness.variance import describe_error

BUILDING_BLOCKS = ("sample", "trace_log_prob", "noise_given_trace")


def _operations(grid: SpeedGrid, dist, objective, gen) -> list[tuple[str, Callable[[], object] | str]]:
    """(name, zero-argument callable or the reason it is skipped) for every operation."""
    trace = dist.sample_with_trace(generator=gen).trace
    leaf = dist.logits.detach().clone().requires_grad_()
    scored = type(dist)(leaf, **dist._extra_args())

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


def run_speed(grid: SpeedGrid, *, progress: bool = False, command: str | None = None) -> Results:
    """Time every operation of ``grid``; a tqdm bar over (device, dist, n) when ``progress``."""
    rows = []
    instances = [(device, dist, n) for device in grid.devices for dist in grid.dists for n in grid.sizes]
    for device, dist_name, n in tqdm(instances, desc="speed", unit="instance", disable=not progress, leave=False):
        torch.manual_seed(derive_seed(grid.seed, dist_name, n, "speed"))
        gen = generator(derive_seed(grid.seed, dist_name, n, grid.task, "speed"), device)
        dist = tasks.make_instance(
            dist_name, n, batch_shape=(grid.batch,), scale=grid.logit_scale, generator=gen, dtype=DTYPES[grid.dtype],
            device=device,
        )
        task = tasks.get(grid.task)
        task_reason = task.supports(dist_name)
        objective = None if task_reason else task.build(dist, gen)
        base = {
            "dist": dist_name, "n": n, "batch": grid.batch, "K": grid.samples, "task": grid.task, "device": device,
            "dtype": grid.dtype, "seed": grid.seed, "repeats": grid.repeats,
        }
        ops = _operations(grid, dist, objective, gen) if task_reason is None else []
        for operation, call in ops:
            row = {**base, "operation": operation, "status": "skipped", "reason": ""}
            if isinstance(call, str):
                rows.append({**row, "reason": call})
                continue
            start_memory, read_memory = timing.peak_memory_tracker(device)
            start_memory()
            try:
                times = timing.time_calls(call, grid.repeats, device)
            except NotImplementedError as error:
                rows.append({**row, "reason": str(error)})
                continue
            except Exception as error:  # record and carry on: one bug must not lose the run
                rows.append({**row, "status": "failed", "reason": describe_error(error)})
                continue
            summary = timing.summarize(times)
            rows.append({
                **row, "status": "ok", "time_median_s": summary.median, "time_q25_s": summary.q25,
                "time_q75_s": summary.q75, "time_lo_s": summary.lo, "time_hi_s": summary.hi,
                "per_instance_us": summary.median / grid.batch * 1e6, "peak_memory_mb": read_memory(),
            })
    frame = pd.DataFrame(rows)
    for column in ("time_median_s", "time_q25_s", "time_q75_s", "time_lo_s", "time_hi_s", "per_instance_us",
                   "peak_memory_mb"):
        if column not in frame.columns:
            frame[column] = float("nan")
    metadata = make_metadata("speed", grid.as_dict(), grid.devices[0], grid.seed, command)
    return Results("speed", frame, metadata)
