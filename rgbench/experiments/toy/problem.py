"""The toy problem: free logits of one structure against its toy loss, and the gradient
standard deviation at initialisation."""

from __future__ import annotations

import math

import torch

from rgbench import distributions, estimators
from rgbench.experiments.toy.losses import toy_loss
from rgbench.experiments.toy.scales import ToyScale


class ToyProblem:
    """Optimise free logits (initialised at 0) of one structure against its toy loss.

    Evaluation: the expected loss by ``eval_samples`` Monte Carlo samples (with its standard
    error) from a private generator, and the loss of the mode. No model selection. A structure
    with ``symmetric_logits`` (spanning trees) is parameterised by the strict upper triangle.
    """

    selection_metric = "loss"
    maximize = False

    def __init__(self, structure: str, scale: ToyScale, seed: int = 0, device: str | torch.device = "cpu"):
        self.structure = distributions.DISTRIBUTIONS.canonical(structure)
        self.cls = distributions.get(self.structure)
        self.extra = self.cls.default_args(scale.n)
        self.loss = toy_loss(self.structure)
        self.scale = scale
        shape = self.cls.random_logits(scale.n, device=device).shape
        self.param = torch.nn.Parameter(torch.zeros(shape, device=device))
        self.eval_generator = torch.Generator(device=device).manual_seed(seed + 1)

    @property
    def logits(self) -> torch.Tensor:
        if self.cls.symmetric_logits:
            upper = self.param.triu(1)
            return upper + upper.transpose(-1, -2)
        return self.param

    def dist(self):
        return self.cls(self.logits, **self.extra)

    def parameters(self):
        return [self.param]

    def train_batch(self, num_inputs: int, generator: torch.Generator):
        return self.dist(), self.loss

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        dist = self.dist()
        samples = dist.sample((self.scale.eval_samples,), generator=self.eval_generator)
        losses = self.loss(dist.indicator(samples))
        return {
            "loss": float(losses.mean()),
            "loss_se": float(losses.std() / math.sqrt(losses.numel())),
            "mode_loss": float(self.loss(dist.indicator(dist.mode))),
        }

    def train(self, mode: bool = True):
        return self

    def state_dict(self) -> dict:
        return {"param": self.param.detach().clone()}

    def load_state_dict(self, state: dict):
        with torch.no_grad():
            self.param.copy_(state["param"])

    def random_state(self) -> dict:
        return {"eval": self.eval_generator.get_state()}

    def set_random_state(self, state: dict) -> None:
        self.eval_generator.set_state(state["eval"])


def gradient_std_at_init(
    structure: str, estimator_name: str, scale: ToyScale, seed: int = 0, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """Per-entry standard deviation of ``std_replicates`` K-sample estimates at logits 0,
    averaged over the logit entries the structure uses (``grad_std``: the authors' figure;
    e.g. the 81 off-diagonal entries outside the root's column for a 10-node arborescence)
    and over every entry (``grad_std_all``)."""
    problem = ToyProblem(structure, scale, seed, device)
    estimator = estimators.get(estimator_name, num_samples=scale.num_samples)
    generator = torch.Generator(device=device).manual_seed(seed + 2)
    dist = problem.dist()
    grads = estimator.estimate(dist, problem.loss, num_replicates=scale.std_replicates, generator=generator)
    std = grads.std(0)
    return {"grad_std": float(std[dist.support_mask].mean()), "grad_std_all": float(std.mean())}
