"""The ListOps problem: arc scores -> arborescence -> tree GNN -> answer, its batches and metrics."""

from __future__ import annotations

import torch

from rgbench import distributions
from rgbench.experiments.listops.data import ListOpsData, ListOpsSplit
from rgbench.experiments.listops.model import ListOpsModel, edge_counts, tree_indicator
from rgbench.experiments.listops.scales import ListOpsScale


class ListOpsProblem:
    """Unsupervised parsing: arc scores -> Arborescence(root=0) -> tree GNN -> answer.

    Training batches come from a seeded permutation of the training set, reshuffled every
    epoch. With ``pad_to`` None, batches are bucketed by length (each pool of 50 batches is
    sorted by length, cut into batches, and the batches shuffled) and cut to their longest
    expression: CLE costs O(L^3) per tree, so this is several times faster than padding to
    50. RELAX needs ``pad_to = max_length``: its critic reads a fixed-size input.
    Evaluation uses the mode arborescence, on the split sorted by length, and reports
    accuracy, edge precision and recall (:func:`rgbench.experiments.listops.model.edge_counts`)
    and the attachment score, as fractions.
    """

    selection_metric = "accuracy"
    maximize = True
    pool_batches = 50

    def __init__(
        self,
        data: ListOpsData,
        model: ListOpsModel,
        scale: ListOpsScale,
        seed: int = 0,
        device="cpu",
        pad_to: int | None = None,
    ):
        self.device = torch.device(device)
        self.splits = {name: getattr(data, name).to(self.device) for name in ("train", "valid", "test")}
        self.model = model.to(self.device)
        self.scale = scale
        self.pad_to = pad_to
        self.cle = distributions.get("cle")
        self._order_generator = torch.Generator().manual_seed(seed + 3)
        self._queue: list[torch.Tensor] = []
        self._lengths_cpu = data.train.lengths.cpu()

    def parameters(self):
        return self.model.parameters()

    def _refill(self, count: int) -> None:
        order = torch.randperm(len(self._lengths_cpu), generator=self._order_generator)
        usable = len(order) - len(order) % count
        batches = []
        pool = count * (self.pool_batches if self.pad_to is None else 1)
        for start in range(0, usable, pool):
            chunk = order[start : min(start + pool, usable)]
            if self.pad_to is None:
                chunk = chunk[torch.argsort(self._lengths_cpu[chunk], stable=True)]
            batches += list(chunk.split(count))
        shuffle = torch.randperm(len(batches), generator=self._order_generator).tolist()
        self._queue = [batches[i] for i in shuffle]

    def _next_rows(self, count: int) -> torch.Tensor:
        if count > len(self._lengths_cpu):
            raise ValueError(f"ListOpsProblem: {count} inputs per step exceed the {len(self._lengths_cpu)} training examples")
        if not self._queue or len(self._queue[-1]) != count:
            self._refill(count)
        return self._queue.pop().to(self.device)

    def _cut(self, batch: ListOpsSplit) -> ListOpsSplit:
        """The batch cut to its longest expression (or to ``pad_to``)."""
        length = self.pad_to if self.pad_to is not None else int(batch.lengths.max())
        return batch._replace(tokens=batch.tokens[:, :length], parents=batch.parents[:, :length])

    def _problem_on(self, batch: ListOpsSplit):
        batch = self._cut(batch)
        logits = self.model.arc_logits(batch.tokens, batch.lengths)
        return self.cle(logits, root=0), self.model.objective(batch.tokens, batch.lengths, batch.labels)

    def train_batch(self, num_inputs: int, generator: torch.Generator):
        return self._problem_on(self.splits["train"].index(self._next_rows(num_inputs)))

    @torch.no_grad()
    def probe(self):
        """(dist, objective) on the first training example, for ``Estimator.supports``."""
        return self._problem_on(self.splits["train"].index(torch.zeros(1, dtype=torch.long, device=self.device)))

    @torch.no_grad()
    def predict(self, batch: ListOpsSplit) -> tuple[torch.Tensor, torch.Tensor]:
        """(answers [B], parents [B, L']) from the mode arborescence, L' the longest in the batch."""
        batch = self._cut(batch)
        logits = self.model.arc_logits(batch.tokens, batch.lengths)
        parents = self.cle(logits, root=0).mode
        tree = tree_indicator(parents).to(logits.dtype)
        answers = self.model.classifier(batch.tokens, batch.lengths, tree).argmax(-1)
        return answers, parents

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        data = self.splits[split]
        totals = {"correct": 0, "hits": 0, "predicted": 0, "gold": 0, "attached": 0, "tokens": 0}
        by_length = torch.argsort(data.lengths, stable=True)
        for rows in by_length.split(self.scale.eval_batch):
            batch = self._cut(data.index(rows))
            answers, parents = self.predict(batch)
            totals["correct"] += int((answers == batch.labels).sum())
            for key, value in edge_counts(parents, batch.parents, batch.tokens, batch.lengths).items():
                totals[key] += int(value)
        return {
            "accuracy": totals["correct"] / data.size,
            "precision": totals["hits"] / totals["predicted"] if totals["predicted"] else 0.0,
            "recall": totals["hits"] / totals["gold"],
            "attachment": totals["attached"] / totals["tokens"],
        }

    def train(self, mode: bool = True):
        return self.model.train(mode)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict):
        return self.model.load_state_dict(state)

    def random_state(self) -> dict:
        """The data order: its generator and the batches still queued in this epoch."""
        return {"order": self._order_generator.get_state(), "queue": [rows.cpu() for rows in self._queue]}

    def set_random_state(self, state: dict) -> None:
        self._order_generator.set_state(state["order"])
        self._queue = list(state["queue"])

