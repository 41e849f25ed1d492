"""The toy optimisation's scales: the authors' setting at ``quick`` and ``paper``.

The toy problems run at the authors' full size (15,000 steps) from ``quick`` up: from about a
minute (t-loo on matching) to tens of minutes (RELAX on the binary tree) per (structure,
estimator) on a CPU. ``paper`` only evaluates with more Monte Carlo samples.
"""

from __future__ import annotations

from dataclasses import dataclass

from rgbench.experiments.scales import Scale

#: the number of Adam steps behind the authors' figures (AUTHORS_TOY)
AUTHORS_STEPS = 15_000


@dataclass(frozen=True)
class ToyScale:
    """The authors' setting: dimension 10, Adam lr 0.01, 3 samples per step, logits at 0."""

    steps: int = AUTHORS_STEPS
    eval_every: int = 500
    eval_samples: int = 1_000  # Monte Carlo samples for the expected loss at each evaluation
    std_replicates: int = 1_000  # estimates for the gradient std at initialisation
    n: int = 10
    lr: float = 0.01
    num_samples: int = 3


TOY_SCALES = {
    Scale.smoke: ToyScale(steps=50, eval_every=25, eval_samples=100, std_replicates=50),
    Scale.quick: ToyScale(),
    Scale.paper: ToyScale(eval_samples=10_000, std_replicates=10_000),
}
