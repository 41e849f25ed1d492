"""Unsupervised ListOps parsing (paper §5.3, Table 3): an LSTM arc scorer defines an
arborescence over the tokens, a tree GNN answers from it.

``data`` (the local generator and cache), ``model``, ``scales`` (and the authors'
hyperparameters), ``problem`` (batches, evaluation metrics), ``run`` (one run; the Table 3
grid), ``table3`` (the paper's numbers, the table and curves).
"""

from rgbench.experiments.listops import run
from rgbench.experiments.listops.scales import LISTOPS_SCALES
from rgbench.experiments.listops.table3 import TABLE3_FILES
from rgbench.experiments.registry import Artefact, Experiment, register

EXPERIMENT = register(Experiment(
    name="listops",
    summary="unsupervised ListOps parsing with an arborescence latent (paper Table 3)",
    scales=LISTOPS_SCALES,
    train=run.train,
    train_estimators=("t-loo",),
    train_options=frozenset({"lr", "cache"}),
    artefact=Artefact("table", 3),
    paper_artefact=run.paper_artefact,
    artefact_estimators=run.LISTOPS_ESTIMATORS,
    artefact_files=TABLE3_FILES,
))  # fmt: skip
