"""The optimisation loop shared by the paper's experiments (toy optimisation, ListOps).

One step: the problem gives a distribution whose logits depend on the trainable
parameters and an objective on its indicator form (possibly with parameters of its own);
the estimator's ``surrogate`` turns K samples per input into a scalar whose gradient w.r.t.
the logits is the estimate (summed over inputs), and the optimiser steps on

    loss = surrogate / inputs  [+ mean_k,b L(X_k,b)   if the surrogate drops L's graph].

The bracketed term trains the objective's own parameters (the ListOps classifier). The
estimators follow the DiCE convention (the surrogate's value is sum_b mean_k L, kept
differentiable), so it is normally not needed; the trainer checks once, on the first step,
whether the surrogate depends on the objective's output (through a zero-valued probe added
to it) and records the answer as ``objective_term`` = ``estimator`` or ``trainer``.

The paper compares estimators at a fixed number of structures per step: with K samples per
input a step sees ``batch_structures // K`` inputs. RELAX's critic is trained alongside by
the trainer's own Adam (learning rate ``critic_lr``, by default the estimator's ``lr``
option) on ``estimator.critic_loss`` (the squared norm of a fresh estimate on the step's
inputs, an unbiased gradient of the variance): one critic step per training step, costing
K more objective evaluations. The critic must see one event shape throughout.

Outputs, in ``out_dir``, each written atomically: ``metrics.csv`` (one tidy row per
evaluation; rewritten as ``metrics.csv.partial`` after every evaluation while running, renamed
at the end), ``summary.json`` (the summary row), ``status.json`` (``running`` with the pid,
``interrupted``, ``failed`` with the error, ``complete``) and ``checkpoint.pt``
(:mod:`rgbench.experiments.checkpoint`) at every evaluation and when a SIGINT/SIGTERM stops the
run (``store.check_stop`` before each step). A new run leaves an earlier run's files in place
until it has its own. With ``resume``, the run continues from ``checkpoint.pt`` and gives the
same metrics as an uninterrupted run on the same device (except the clock columns
``elapsed_s``, ``wall_s``, ``eval_s``, ``steps_per_s``); a complete run is returned as saved.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol

import torch
from tqdm.auto import tqdm

import rgbench
from rgbench.distributions.base import StructuredDistribution
from rgbench.estimators.base import Estimator, Objective
from rgbench.bench import store
from rgbench.experiments import checkpoint

#: summary and metrics columns that read the clock (they differ between identical runs)
CLOCK_COLUMNS = ("elapsed_s", "wall_s", "eval_s", "steps_per_s")


class TrainingProblem(Protocol):
    """What the trainer needs from a task."""

    #: The validation metric used for model selection, and whether larger is better.
    selection_metric: str
    maximize: bool

    def parameters(self) -> Iterable[torch.nn.Parameter]:
        """Everything the optimiser updates (encoder and objective parameters)."""

    def train_batch(self, num_inputs: int, generator: torch.Generator) -> tuple[StructuredDistribution, Objective]:
        """A distribution over ``num_inputs`` inputs (its batch) and the objective on it."""

    def evaluate(self, split: str) -> dict[str, float]:
        """Metrics on ``split`` ("valid" or "test"), computed without gradients."""

    def train(self, mode: bool = True) -> Any:
        """Switch dropout etc. on or off."""

    def state_dict(self) -> dict:
        ...

    def load_state_dict(self, state: dict) -> Any:
        ...

    # Optional: a problem that draws from generators of its own (data order, evaluation
    # samples) returns their state in ``random_state() -> dict`` and takes it back in
    # ``set_random_state(state)``, so that checkpoints hold it.


@dataclass
class TrainConfig:
    """Optimisation settings. ``batch_structures`` structures per step, i.e.
    ``batch_structures // num_samples`` inputs with K = ``num_samples`` samples each."""

    steps: int
    eval_every: int
    lr: float
    num_samples: int = 1
    batch_structures: int = 1
    optimizer: str = "adam"
    weight_decay: float = 0.0
    grad_clip: float | None = None
    critic_lr: float | None = None  # None: the estimator's own ``lr`` option
    select_best: bool = True
    eval_at_start: bool = False
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "eval_every", "num_samples", "batch_structures"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig: {name} must be a positive int, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig: lr must be positive, got {self.lr!r}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"TrainConfig: optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if self.batch_structures < self.num_samples:
            raise ValueError(
                f"TrainConfig: batch_structures={self.batch_structures} holds fewer structures than "
                f"the num_samples={self.num_samples} samples of one input"
            )

    @property
    def inputs_per_step(self) -> int:
        return self.batch_structures // self.num_samples


class _ProbedObjective:
    """The objective plus a zero-valued probe, recording its outputs (with their graph)."""

    def __init__(self, objective: Objective, probe: torch.Tensor | None):
        self.objective, self.probe, self.values = objective, probe, []
        self.accepts_relaxed = getattr(objective, "accepts_relaxed", True)

    def __call__(self, indicator: torch.Tensor) -> torch.Tensor:
        values = self.objective(indicator)
        self.values.append(values)
        return values if self.probe is None else values + self.probe.to(values.dtype)


class _NoGradObjective:
    """The objective's values as constants (for the critic: no graph to its parameters)."""

    def __init__(self, objective: Objective):
        self.objective = objective
        self.accepts_relaxed = getattr(objective, "accepts_relaxed", True)

    def __call__(self, indicator: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.objective(indicator)


def _metadata(device: torch.device) -> dict[str, Any]:
    return {
        "rgbench_version": rgbench.__version__,
        "torch_version": torch.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
    }


def _write_json(path: Path, payload: dict) -> None:
    store.write_text(path, json.dumps(payload, indent=2, default=str))


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, list(rows[0]), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


@dataclass
class Trainer:
    """Runs ``config.steps`` optimisation steps of ``problem`` with ``estimator``.

    ``run_info`` (task, estimator, seed, scale, ...) is copied into every metrics row and the
    summary. ``out_dir`` None keeps everything in memory (``self.rows``).
    """

    problem: TrainingProblem
    estimator: Estimator
    config: TrainConfig
    out_dir: str | Path | None = None
    run_info: dict[str, Any] = field(default_factory=dict)
    device: torch.device | str = "cpu"
    progress: bool = True
    resume: bool = False

    def __post_init__(self):
        self.device = torch.device(self.device)
        self.rows: list[dict[str, Any]] = []
        self.objective_term: str | None = None
        self._critic_optimizer: torch.optim.Optimizer | None = None
        self._critic_params: list[torch.Tensor] = []
        self._critic_inputs = None
        self._critic_saved: dict | None = None  # a resumed critic, loaded when it is created
        self.step = 0  # the last finished step

    # ------------------------------------------------------------------ files
    def _paths(self) -> dict[str, Path] | None:
        if self.out_dir is None:
            return None
        out = Path(self.out_dir)
        return {
            "partial": out / "metrics.csv.partial",
            "metrics": out / "metrics.csv",
            "summary": out / "summary.json",
            "status": out / "status.json",
            "checkpoint": out / "checkpoint.pt",
        }

    def _append_row(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        paths = self._paths()
        if paths is not None:
            store.write_text(paths["partial"], _csv_text(self.rows))

    # ------------------------------------------------------------------ steps
    def _step_loss(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The loss of one step and the objective values it saw (detached)."""
        dist, objective = self.problem.train_batch(self.config.inputs_per_step, generator)
        first = self.objective_term is None
        probe = torch.zeros((), device=self.device, requires_grad=True) if first else None
        probed = _ProbedObjective(objective, probe)
        if self._has_critic():
            self._ensure_critic(dist)
        surrogate = self.estimator.surrogate(dist, probed, generator)
        if not (isinstance(surrogate, torch.Tensor) and surrogate.dim() == 0):
            raise ValueError(f"Trainer: {type(self.estimator).__name__}.surrogate must return a scalar tensor")
        if first:
            kept = False
            if surrogate.requires_grad:
                (probe_grad,) = torch.autograd.grad(surrogate, probe, retain_graph=True, allow_unused=True)
                kept = probe_grad is not None and bool(probe_grad.abs() > 0)
            self.objective_term = "estimator" if kept else "trainer"
        inputs = max(1, math.prod(dist.batch_shape))
        loss = surrogate / inputs
        if self.objective_term == "trainer" and probed.values:
            loss = loss + torch.cat([v.reshape(-1) for v in probed.values]).mean()
        if self._has_critic():
            # The critic learns on this step's inputs, with the logits and L as constants.
            self._critic_inputs = (dist.with_logits(dist.logits.detach()), _NoGradObjective(objective))
        values = torch.cat([v.detach().reshape(-1) for v in probed.values]) if probed.values else None
        return loss, values

    @staticmethod
    def _check_finite(step: int, loss: torch.Tensor, params: list[torch.Tensor]) -> None:
        """Raise before the optimiser step if the loss or a gradient is NaN or infinite: one
        synchronisation per step, so that the error names the step that went wrong rather
        than a later one failing on poisoned parameters."""
        flags = [torch.isfinite(loss.detach())] + [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
        finite = torch.stack(flags).tolist()
        if not all(finite):
            what = "loss" if not finite[0] else f"gradient ({finite.count(False)} parameter tensors)"
            raise FloatingPointError(f"Trainer: non-finite {what} at step {step}")

    def _has_critic(self) -> bool:
        return self.estimator.has_critic

    def _ensure_critic(self, dist: StructuredDistribution) -> None:
        """Create RELAX's critic and its Adam before the first step uses it; a resumed run
        loads the saved weights and moments into them here, before any estimate reads them."""
        if self._critic_optimizer is not None:
            return
        self._critic_params = list(self.estimator.critic(dist).parameters())
        lr = self.config.critic_lr if self.config.critic_lr is not None else getattr(self.estimator, "lr", 1e-3)
        self._critic_optimizer = torch.optim.Adam(self._critic_params, lr=lr)
        if self._critic_saved is not None:
            with torch.no_grad():
                for param, saved in zip(self._critic_params, self._critic_saved["params"]):
                    param.copy_(saved)
            self._critic_optimizer.load_state_dict(self._critic_saved["optimizer"])

    def _critic_step(self, generator: torch.Generator) -> torch.Tensor:
        """One Adam step on RELAX's critic."""
        dist, objective = self._critic_inputs
        self._ensure_critic(dist)
        loss = self.estimator.critic_loss(dist, objective, generator)
        self._critic_optimizer.zero_grad()
        loss.backward(inputs=self._critic_params)
        self._critic_optimizer.step()
        return loss.detach()

    # ------------------------------------------------------------------ checkpoints
    def _state(self, optimizer, generator, train_losses, critic_losses, elapsed: float) -> dict[str, Any]:
        critic = None
        if self._critic_optimizer is not None:
            critic = {"params": [p.detach() for p in self._critic_params],
                      "optimizer": self._critic_optimizer.state_dict()}
        elif self._critic_saved is not None:  # resumed, not stepped since
            critic = self._critic_saved
        return {
            "step": self.step,
            "config": asdict(self.config),
            "run_info": json.dumps(self.run_info, sort_keys=True, default=str),
            "problem": self.problem.state_dict(),
            "problem_random": self.problem.random_state() if hasattr(self.problem, "random_state") else {},
            "optimizer": optimizer.state_dict(),
            "critic": critic,
            "generator": generator.get_state(),
            "global_rng": checkpoint.global_rng_state(self.device),
            "best": self._best,
            "rows": self.rows,
            "objective_term": self.objective_term,
            "train_losses": train_losses,
            "critic_losses": critic_losses,
            "eval_s": self._eval_s,
            "elapsed_s": elapsed,
        }

    def _restore(self, state: dict[str, Any], optimizer, generator) -> tuple[list, list, float]:
        """Load a checkpoint written by :meth:`_state`; returns the running sums and the
        seconds the run had taken."""
        path = self._paths()["checkpoint"]
        mine = json.dumps(self.run_info, sort_keys=True, default=str)
        if state["config"] != asdict(self.config) or state["run_info"] != mine:
            raise store.OutputError(f"--resume: {path} was written by a run with other settings; "
                                    "use --force to start this one afresh")
        device = self.device
        self.step = state["step"]
        self.problem.load_state_dict(state["problem"])
        if hasattr(self.problem, "set_random_state"):
            self.problem.set_random_state(state["problem_random"])
        optimizer.load_state_dict(state["optimizer"])
        self._critic_saved = state["critic"]
        generator.set_state(state["generator"])
        checkpoint.set_global_rng_state(state["global_rng"], device)
        self._best = state["best"]
        self.rows = state["rows"]
        self.objective_term = state["objective_term"]
        self._eval_s = state["eval_s"]
        on_device = lambda values: [v.to(device) for v in values]  # noqa: E731
        return on_device(state["train_losses"]), on_device(state["critic_losses"]), state["elapsed_s"]

    # ------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        """Train, evaluate every ``eval_every`` steps, select, test; returns the summary row."""
        paths = self._paths()
        if paths is not None:
            Path(self.out_dir).mkdir(parents=True, exist_ok=True)
            done = self._saved_summary() if self.resume else None
            if done is not None:
                return done
            _write_json(paths["status"], {"status": "running", "pid": os.getpid(), **self.run_info})
        try:
            summary = self._run()
        except store.Interrupted as interrupted:
            if paths is not None:
                _write_json(paths["status"], {"status": "interrupted", "signal": str(interrupted),
                                              "step": self.step, **self.run_info})
            raise
        except BaseException as error:  # record every failure, then re-raise
            if paths is not None:
                _write_json(
                    paths["status"],
                    {
                        "status": "failed",
                        "error": f"{type(error).__name__}: {error}",
                        "traceback": traceback.format_exc(),
                        "evaluations_written": len(self.rows),
                        **self.run_info,
                    },
                )
            raise
        if paths is not None:
            store.write_text(paths["metrics"], _csv_text(self.rows))
            _write_json(paths["summary"], summary)
            _write_json(paths["status"], {"status": "complete", **self.run_info})
            paths["partial"].unlink(missing_ok=True)
            paths["checkpoint"].unlink(missing_ok=True)  # the finished files replace it
        return summary

    def _saved_summary(self) -> dict[str, Any] | None:
        """The summary of a complete run in ``out_dir`` with this configuration (its rows
        loaded into ``self.rows``), else None."""
        paths = self._paths()
        if not (paths["status"].is_file() and paths["summary"].is_file() and paths["metrics"].is_file()):
            return None
        if store.read_json(paths["status"]).get("status") != "complete":
            return None
        summary = store.read_json(paths["summary"])
        if summary.get("config") != json.dumps(asdict(self.config)):
            raise store.OutputError(f"--resume: {self.out_dir} holds a complete run with other settings; "
                                    "use --force to replace it")
        import pandas as pd  # only a resumed complete run reads its rows back

        self.rows = pd.read_csv(paths["metrics"]).to_dict("records")
        self.objective_term = summary.get("objective_term")
        return summary

    def _evaluate(self, step: int, start: float, extra: dict[str, float]) -> float:
        """Validate, log a row, keep the best state; returns the selection metric."""
        began = time.perf_counter()
        self.problem.train(False)
        metrics = self.problem.evaluate("valid")
        self._eval_s += time.perf_counter() - began
        row = {
            **self.run_info,
            "step": step,
            "elapsed_s": time.perf_counter() - start,
            **extra,
            **{f"valid_{name}": value for name, value in metrics.items()},
        }
        self._append_row(row)
        value = metrics[self.problem.selection_metric]
        best = self._best
        better = best["value"] is None or math.isnan(best["value"]) or (
            value > best["value"] if self.problem.maximize else value < best["value"]
        )
        if better:
            best["value"], best["step"] = value, step
            if self.config.select_best:
                best["state"] = copy.deepcopy(self.problem.state_dict())
        best["last"] = value
        return value

    def _run(self) -> dict[str, Any]:
        config = self.config
        torch.manual_seed(config.seed)
        generator = torch.Generator(device=self.device).manual_seed(config.seed)
        params = [p for p in self.problem.parameters() if p.requires_grad]
        if not params:
            raise ValueError("Trainer: the problem has no trainable parameters")
        optimizer_class = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        optimizer = optimizer_class(params, lr=config.lr, weight_decay=config.weight_decay)
        critic = self._has_critic()

        self._best = {"value": None, "step": None, "state": None, "last": None}
        self._eval_s = 0.0
        # Running sums stay on the device: one synchronisation per evaluation, not per step.
        train_losses: list[torch.Tensor] = []
        critic_losses: list[torch.Tensor] = []
        earlier = 0.0  # seconds of the run before a resume
        paths = self._paths()
        if self.resume and paths is not None and paths["checkpoint"].is_file():
            train_losses, critic_losses, earlier = self._restore(checkpoint.load(paths["checkpoint"]), optimizer, generator)
        start = time.perf_counter() - earlier
        save = lambda: paths is not None and checkpoint.save(  # noqa: E731
            paths["checkpoint"], self._state(optimizer, generator, train_losses, critic_losses, time.perf_counter() - start))
        if config.eval_at_start and self.step == 0:
            self._evaluate(0, start, {"train_objective": float("nan")})
        # Counted by hand after each finished step (not by wrapping the range, which counts a
        # step only when the next one starts): the last refresh shows steps/steps.
        bar = tqdm(total=config.steps, initial=self.step, disable=not self.progress,
                   desc=self.run_info.get("run", "train"), leave=False)
        try:
            for step in range(self.step + 1, config.steps + 1):
                store.check_stop()
                self.problem.train(True)
                loss, values = self._step_loss(generator)
                optimizer.zero_grad()
                loss.backward(inputs=params)
                self._check_finite(step, loss, params)
                if config.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                optimizer.step()
                if values is not None:
                    train_losses.append(values.mean())
                if critic:
                    critic_losses.append(self._critic_step(generator))
                self.step = step
                bar.update(1)

                if step % config.eval_every == 0 or step == config.steps:
                    extra = {"train_objective": float(torch.stack(train_losses).mean()) if train_losses else float("nan")}
                    if critic:
                        extra["critic_loss"] = float(torch.stack(critic_losses).mean())
                    train_losses, critic_losses = [], []
                    value = self._evaluate(step, start, extra)
                    bar.set_postfix({self.problem.selection_metric: f"{value:.4g}"})
                    save()
        except store.Interrupted as interrupted:
            if not interrupted.immediate:  # else it may have struck mid-step: keep the last evaluation's
                save()  # the state after the last finished step
            raise
        finally:
            bar.close()
        wall = time.perf_counter() - start

        best = self._best
        if config.select_best and best["state"] is not None:
            self.problem.load_state_dict(best["state"])
        self.problem.train(False)
        test = self.problem.evaluate("test")
        selected_step = best["step"] if config.select_best else config.steps
        selected_value = best["value"] if config.select_best else best["last"]
        train_s = wall - self._eval_s
        return {
            **self.run_info,
            "status": "complete",
            "steps": config.steps,
            "best_step": selected_step,
            f"valid_{self.problem.selection_metric}": selected_value,
            **{f"test_{name}": value for name, value in test.items()},
            "wall_s": wall,
            "eval_s": self._eval_s,
            "steps_per_s": config.steps / train_s if train_s > 0 else float("nan"),
            "objective_term": self.objective_term,
            "config": json.dumps(asdict(config)),
            **_metadata(self.device),
        }
