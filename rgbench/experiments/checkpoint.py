"""Training checkpoints: every state a run needs to continue as if it had never stopped.

A checkpoint is one ``torch.save`` dictionary written atomically (``store.atomic_write``), read
back with ``weights_only=True`` (tensors, numbers, strings, lists and dicts only). Besides the
model, optimiser and critic it holds every random state the run draws from: torch's global CPU
generator (dropout, initialisations), the device's when it is CUDA, the trainer's sampling
generator and the problem's own (data order, evaluation samples), so a resumed run draws the
very numbers the uninterrupted one would have.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rgbench.bench import store


def global_rng_state(device: torch.device) -> dict[str, Any]:
    """torch's global generators: the CPU one, and the device's when it is CUDA."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_global_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def to_cpu(value):
    """``value`` with every tensor moved to the CPU (checkpoints load on any device)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(item) for item in value)
    return value


def save(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (the previous checkpoint stays until then)."""
    state = to_cpu(state)
    return store.atomic_write(path, lambda temporary: torch.save(state, temporary))


def load(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path``; an unreadable one is an :class:`~rgbench.bench.store.OutputError`."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which, not a pickle traceback
        raise store.OutputError(f"cannot read the checkpoint {path}: {type(error).__name__}: {error}") from error
