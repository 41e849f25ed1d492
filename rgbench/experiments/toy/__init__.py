"""The authors' toy optimisation: free logits of one structure (dimension 10) against a loss
with a known optimum, Adam lr 0.01, 3 samples per step, 15,000 steps; compared with the
authors' code, measured (not a numbered table of the paper).

``losses`` (the objective and optimum per structure), ``scales``, ``problem``, ``run``,
``table`` (table and figure), ``authors`` (their figures).
"""

from rgbench.experiments.registry import Experiment, register
from rgbench.experiments.toy import run
from rgbench.experiments.toy.losses import toy_structures
from rgbench.experiments.toy.scales import TOY_SCALES

EXPERIMENT = register(Experiment(
    name="toy",
    summary="the authors' toy optimisation: loss curves and final losses per structure and estimator",
    scales=TOY_SCALES,
    train=run.train,
    train_estimators=run.TOY_ESTIMATORS,
    train_options=frozenset({"dists"}),
    structures=tuple(toy_structures()),
))  # fmt: skip
