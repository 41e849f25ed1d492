"""The unsupervised ListOps parser: an arc-scoring encoder and a tree GNN classifier.

Paper §5.3 / docs/design.md §6.2. Tokens ``[B, L]`` (PAD = 0 after ``lengths``) go through

* :class:`ArcScorer`: an embedding, a one-layer bidirectional LSTM (the paper's "pair of
  LSTMs", ``hidden`` units per direction, dropout on its input and output) and a biaffine
  score ``s[i, j] = h_i^T W d_j + u^T h_i`` of the edge i -> j (i the parent) from a head
  and a dependent projection. These are the logits of an ``Arborescence(root=0)`` over the
  tokens: the first token is the root.
* :class:`TreeClassifier`: an NRI-style message-passing network over a (sampled or relaxed)
  arborescence ``A[..., B, L, L]`` (``A[parent, child]``), ``steps`` rounds of
  ``p_c = sum_i A[i, c] h_i`` (the child's parent state), ``m_c = MLP([h_c, p_c])`` (the
  child -> parent message), ``a_i = sum_c A[i, c] m_c`` and ``h_i <- LayerNorm(h_i +
  MLP([h_i, a_i]))``; then an MLP from the first token's state to the 10 answers. Linear in
  A, so SST's fractional trees pass through unchanged. Cost O(steps (L^2 + L hidden) hidden)
  per tree.

Padding (the choice the brief leaves open): every batch is padded to the same length L, and
a padding token's only usable incoming edge comes from the root, with a constant logit 0;
padding tokens have no outgoing edges. An arborescence then always exists, the padding
edges are drawn with probability one (adding nothing to log P(T) and no gradient), the
RELAX critic sees one event shape, and the classifier drops every edge that touches a
padding token.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from rgbench.experiments.listops.data import CLOSE, NUM_CLASSES, VOCAB_SIZE, is_operator


def valid_mask(tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, L]``: positions before each sequence's length."""
    positions = torch.arange(tokens.shape[-1], device=tokens.device)
    return positions < lengths.unsqueeze(-1)


def mask_arc_logits(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Arborescence logits ``[B, L, L]`` from raw scores: -inf on the diagonal, into the root
    (position 0) and on edges touching padding, except the constant 0 on root -> padding."""
    length = scores.shape[-1]
    eye = torch.eye(length, dtype=torch.bool, device=scores.device)
    into_root = torch.zeros(length, dtype=torch.bool, device=scores.device)
    into_root[0] = True
    real = valid.unsqueeze(-1) & valid.unsqueeze(-2) & ~eye & ~into_root
    root_to_pad = torch.zeros_like(real)
    root_to_pad[:, 0, :] = ~valid
    neg_inf = torch.full_like(scores, -torch.inf)
    return torch.where(real, scores, torch.where(root_to_pad, torch.zeros_like(scores), neg_inf))


class ArcScorer(nn.Module):
    """Tokens -> arc logits ``[B, L, L]`` for ``Arborescence(logits, root=0)``."""

    def __init__(self, embedding: int = 60, hidden: int = 60, dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, embedding, padding_idx=0)
        self.lstm = nn.LSTM(embedding, hidden, num_layers=1, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden, hidden)
        self.dependent = nn.Linear(2 * hidden, hidden)
        self.bilinear = nn.Parameter(torch.zeros(hidden, hidden))
        self.head_bias = nn.Linear(hidden, 1, bias=False)
        nn.init.xavier_uniform_(self.bilinear)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        states, _ = self.lstm(self.dropout(self.embed(tokens)))
        states = self.dropout(states)
        heads = torch.tanh(self.head(states))
        dependents = torch.tanh(self.dependent(states))
        scores = heads @ self.bilinear @ dependents.transpose(-1, -2) + self.head_bias(heads)
        return mask_arc_logits(scores, valid_mask(tokens, lengths))


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, outputs))


class TreeClassifier(nn.Module):
    """Answers ``[..., B, 10]`` from tokens and a tree ``A[..., B, L, L]`` (``[parent, child]``)."""

    def __init__(self, hidden: int = 60, steps: int = 5):
        super().__init__()
        if steps < 1:
            raise ValueError(f"TreeClassifier: steps must be >= 1, got {steps}")
        self.steps = steps
        self.embed = nn.Embedding(VOCAB_SIZE, hidden, padding_idx=0)
        self.message = _mlp(2 * hidden, hidden, hidden)
        self.update = _mlp(2 * hidden, hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.readout = _mlp(hidden, hidden, NUM_CLASSES)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor, tree: torch.Tensor) -> torch.Tensor:
        valid = valid_mask(tokens, lengths).to(tree.dtype)
        # Edges touching padding carry no message (padding hangs off the root by convention).
        tree = tree * valid.unsqueeze(-1) * valid.unsqueeze(-2)
        states = self.embed(tokens).to(tree.dtype).expand(*tree.shape[:-2], -1, -1)
        for _ in range(self.steps):
            parent_states = tree.transpose(-1, -2) @ states
            messages = self.message(torch.cat([states, parent_states], -1))
            gathered = tree @ messages
            states = self.norm(states + self.update(torch.cat([states, gathered], -1)))
        return self.readout(states[..., 0, :])


class ListOpsObjective:
    """Cross-entropy of the classifier's answer given a tree, per tree: ``[...]`` for trees
    ``[..., B, L, L]``; differentiable w.r.t. the classifier's parameters and the tree."""

    accepts_relaxed = True

    def __init__(self, classifier: TreeClassifier, tokens: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor):
        self.classifier, self.tokens, self.lengths, self.labels = classifier, tokens, lengths, labels

    def __call__(self, tree: torch.Tensor) -> torch.Tensor:
        answers = self.classifier(self.tokens, self.lengths, tree)
        labels = self.labels.expand(answers.shape[:-1])
        losses = F.cross_entropy(answers.reshape(-1, NUM_CLASSES), labels.reshape(-1), reduction="none")
        return losses.reshape(labels.shape)


class ListOpsModel(nn.Module):
    """Encoder (arc scores) + classifier (tree GNN), trained jointly on the answer's
    cross-entropy."""

    def __init__(self, hidden: int = 60, steps: int = 5, dropout: float = 0.1):
        super().__init__()
        self.encoder = ArcScorer(hidden, hidden, dropout)
        self.classifier = TreeClassifier(hidden, steps)

    def arc_logits(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.encoder(tokens, lengths)

    def objective(self, tokens: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor) -> ListOpsObjective:
        return ListOpsObjective(self.classifier, tokens, lengths, labels)


def edge_counts(
    predicted: torch.Tensor, gold: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Counts for the edge metrics of parent arrays ``[B, L]`` (-1 at the root).

    Gold edges: operator -> argument (an argument's head token; closing brackets excluded,
    their attachment is a convention, not part of the expression's meaning). Predicted
    edges: those whose parent is an operator token and whose child is not a closing bracket
    (the only edges a parse can contain). precision = hits / predicted, recall = hits / gold.
    ``attached``/``tokens`` give the unlabelled attachment score over every non-root token.
    """
    valid = valid_mask(tokens, lengths)
    non_root = valid.clone()
    non_root[:, 0] = False
    argument = non_root & (tokens != CLOSE)
    safe_predicted = predicted.clamp(min=0)
    parent_is_operator = is_operator(tokens.gather(-1, safe_predicted)) & (predicted >= 0)
    predicted_edges = argument & parent_is_operator
    hits = predicted_edges & (predicted == gold)
    return {
        "hits": hits.sum(),
        "predicted": predicted_edges.sum(),
        "gold": argument.sum(),
        "attached": (non_root & (predicted == gold)).sum(),
        "tokens": non_root.sum(),
    }


def tree_indicator(parents: torch.Tensor) -> torch.Tensor:
    """``A[..., parent, child] = 1`` from parent arrays ``[..., L]`` (-1 entries ignored)."""
    length = parents.shape[-1]
    has_parent = parents >= 0
    one_hot = F.one_hot(parents.clamp(min=0), length).to(torch.float32) * has_parent.unsqueeze(-1)
    return one_hot.transpose(-1, -2)
