"""A local generator of simplified ListOps (Nangia & Bowman 2018; the variant of paper §5.3).

Expressions are prefix lists over the digits 0-9 with the operators MIN, MAX and MED
(SUM_MOD is excluded), e.g. ``[MIN 3 [MED 3 5 4 ] 2 ]`` = 2. One token per operator (its
opening bracket included), digit and closing bracket.

Depth: a digit has depth 0, an operator 1 + the largest depth of its arguments. Each
example draws its depth uniformly from ``depths`` (default 1..5: depths 2-5 plus depth-1
examples, docs/design.md §6.2), then an expression of exactly that depth: one argument (at a random
position) carries the depth, the others are digits or, with probability ``nest_prob``,
shallower sub-expressions. Operators take ``min_args``..``max_args`` arguments; drafts
longer than ``max_length`` tokens are redrawn. With ``balance_labels`` every (depth, answer)
cell receives the same quota (rejection sampling), so a constant classifier scores 10 %.
Duplicates are allowed (there are only 300 two-argument depth-1 expressions).

MED is the upper median, ``sorted(args)[len(args) // 2]`` (``statistics.median_high``).

Parse convention (the ground truth for edge metrics), an arborescence over token positions
rooted at position 0:

* an operator token is the parent of the first token of each of its arguments (a digit or
  a nested operator) and of its own closing bracket;
* the first token is the root (parent -1): the outermost operator.

So every token but the first has exactly one parent, and a tree of depth d has its digits
d edges below the root: d rounds of child-to-parent messages reach the root.

Encoding (a :class:`ListOpsSplit`): ``tokens`` LongTensor [N, L] (PAD = 0 after the end),
``lengths`` [N], ``labels`` [N] in 0..9, ``parents`` [N, L] (-1 at the root and on padding),
``depths`` [N]. ``L = max_length``.

Datasets are cached on disk under a fingerprint of the settings (and of this generator's
version), written to a temporary file and renamed, so a partial file is never read.
Cost: O(total tokens) Python work, plus the answer-balancing redraws: about 0.2 ms per
example on one CPU core (under half a minute for the paper's 120,000).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

#: Bump when the generator's output for given settings changes (part of the fingerprint).
GENERATOR_VERSION = 1

PAD = 0
DIGITS = tuple(range(1, 11))  # token of digit d is d + 1
OPERATORS = {"MIN": 11, "MAX": 12, "MED": 13}
CLOSE = 14
VOCAB = ["<pad>"] + [str(d) for d in range(10)] + ["[MIN", "[MAX", "[MED", "]"]
VOCAB_SIZE = len(VOCAB)
NUM_CLASSES = 10


def digit_token(d: int) -> int:
    return d + 1


def is_operator(token: torch.Tensor) -> torch.Tensor:
    return (token >= OPERATORS["MIN"]) & (token <= OPERATORS["MED"])


def apply_operator(op: int, args: list[int]) -> int:
    """MIN / MAX / MED (upper median) of ``args``, by operator token."""
    if op == OPERATORS["MIN"]:
        return min(args)
    if op == OPERATORS["MAX"]:
        return max(args)
    if op == OPERATORS["MED"]:
        return sorted(args)[len(args) // 2]
    raise ValueError(f"apply_operator: op must be an operator token {sorted(OPERATORS.values())}, got {op}")


@dataclass(frozen=True)
class ListOpsSettings:
    """Everything that determines a generated dataset (its fingerprint hashes these)."""

    num_train: int = 100_000
    num_valid: int = 10_000
    num_test: int = 10_000
    max_length: int = 50
    depths: tuple[int, ...] = (1, 2, 3, 4, 5)
    min_args: int = 2
    max_args: int = 5
    nest_prob: float = 0.25
    balance_labels: bool = True
    seed: int = 0

    def __post_init__(self):
        for name in ("num_train", "num_valid", "num_test"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ListOpsSettings: {name} must be a positive int, got {value!r}")
        if not self.depths or any(not isinstance(d, int) or d < 1 for d in self.depths):
            raise ValueError(f"ListOpsSettings: depths must be positive ints, got {self.depths!r}")
        if not 1 <= self.min_args <= self.max_args:
            raise ValueError(
                f"ListOpsSettings: need 1 <= min_args <= max_args, got min_args={self.min_args}, max_args={self.max_args}"
            )
        # The shortest expression of depth d: each level adds an operator, a bracket and
        # min_args - 1 digits around the deeper argument: 1 + d (min_args + 1) tokens.
        shortest = 1 + max(self.depths) * (self.min_args + 1)
        if self.max_length < shortest:
            raise ValueError(
                f"ListOpsSettings: max_length={self.max_length} cannot hold an expression of depth "
                f"{max(self.depths)} (needs at least {shortest} tokens)"
            )
        if not 0.0 <= self.nest_prob < 1.0:
            raise ValueError(f"ListOpsSettings: nest_prob must be in [0, 1), got {self.nest_prob}")

    def fingerprint(self) -> str:
        payload = json.dumps({"version": GENERATOR_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


class Example(NamedTuple):
    tokens: list[int]
    parents: list[int]
    label: int
    depth: int


class ListOpsSplit(NamedTuple):
    """One split, padded to ``max_length`` (see the module docstring for the encoding)."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor
    parents: torch.Tensor
    depths: torch.Tensor

    @property
    def size(self) -> int:
        """The number of examples (``len`` is the tuple's, as for any NamedTuple)."""
        return self.tokens.shape[0]

    def index(self, rows: torch.Tensor) -> "ListOpsSplit":
        return ListOpsSplit(*(part[rows] for part in self))

    def to(self, device) -> "ListOpsSplit":
        return ListOpsSplit(*(part.to(device) for part in self))


class ListOpsData(NamedTuple):
    train: ListOpsSplit
    valid: ListOpsSplit
    test: ListOpsSplit
    settings: ListOpsSettings


def _draft(rng: random.Random, depth: int, settings: ListOpsSettings, out: list[int], parents: list[int], parent: int) -> int:
    """Append an expression of exactly ``depth`` to ``out`` (parent of its head: ``parent``);
    returns its value."""
    head = len(out)
    parents.append(parent)
    if depth == 0:
        value = rng.randrange(10)
        out.append(digit_token(value))
        return value
    op = rng.choice(list(OPERATORS.values()))
    out.append(op)
    num_args = rng.randint(settings.min_args, settings.max_args)
    deep = rng.randrange(num_args)
    values = []
    for position in range(num_args):
        if position == deep:
            sub = depth - 1
        elif depth > 1 and rng.random() < settings.nest_prob:
            sub = rng.randint(1, depth - 1)
        else:
            sub = 0
        values.append(_draft(rng, sub, settings, out, parents, head))
    out.append(CLOSE)
    parents.append(head)
    return apply_operator(op, values)


def draw_example(rng: random.Random, depth: int, settings: ListOpsSettings, max_tries: int = 10_000) -> Example:
    """One expression of exactly ``depth`` and at most ``max_length`` tokens."""
    for _ in range(max_tries):
        tokens, parents = [], []
        label = _draft(rng, depth, settings, tokens, parents, -1)
        if len(tokens) <= settings.max_length:
            return Example(tokens, parents, label, depth)
    raise RuntimeError(
        f"draw_example: no expression of depth {depth} within {settings.max_length} tokens after {max_tries} drafts; "
        "lower nest_prob or max_args"
    )


def _generate_split(rng: random.Random, size: int, settings: ListOpsSettings) -> list[Example]:
    depths = list(settings.depths)
    # Equal share per depth (the first few depths take the remainder).
    per_depth = [size // len(depths) + (i < size % len(depths)) for i in range(len(depths))]
    examples: list[Example] = []
    for depth, count in zip(depths, per_depth):
        if not settings.balance_labels:
            examples += [draw_example(rng, depth, settings) for _ in range(count)]
            continue
        quota = [count // NUM_CLASSES + (c < count % NUM_CLASSES) for c in range(NUM_CLASSES)]
        # Which answers receive the remainder of count / 10 is random, so none is favoured.
        order = list(range(NUM_CLASSES))
        rng.shuffle(order)
        quota = [quota[order.index(c)] for c in range(NUM_CLASSES)]
        budget, missing = 200 * count + 10_000, count
        while missing:
            budget -= 1
            if budget < 0:
                raise RuntimeError(f"_generate_split: could not fill the answer quotas at depth {depth}; disable balance_labels")
            example = draw_example(rng, depth, settings)
            if quota[example.label]:
                quota[example.label] -= 1
                missing -= 1
                examples.append(example)
    rng.shuffle(examples)
    return examples


def _pack(examples: list[Example], max_length: int) -> ListOpsSplit:
    count = len(examples)
    tokens = torch.full((count, max_length), PAD, dtype=torch.long)
    parents = torch.full((count, max_length), -1, dtype=torch.long)
    for row, example in enumerate(examples):
        tokens[row, : len(example.tokens)] = torch.tensor(example.tokens)
        parents[row, : len(example.parents)] = torch.tensor(example.parents)
    lengths = torch.tensor([len(e.tokens) for e in examples], dtype=torch.long)
    labels = torch.tensor([e.label for e in examples], dtype=torch.long)
    depths = torch.tensor([e.depth for e in examples], dtype=torch.long)
    return ListOpsSplit(tokens, lengths, labels, parents, depths)


def generate(settings: ListOpsSettings) -> ListOpsData:
    """All three splits from one seeded stream (train, then valid, then test)."""
    rng = random.Random(settings.seed)
    splits = [
        _pack(_generate_split(rng, size, settings), settings.max_length)
        for size in (settings.num_train, settings.num_valid, settings.num_test)
    ]
    return ListOpsData(*splits, settings)


def default_cache_dir() -> Path:
    return Path(os.environ.get("RGBENCH_CACHE", Path.home() / ".cache" / "rgbench"))


def load_or_generate(settings: ListOpsSettings, cache_dir: str | Path | None = None) -> ListOpsData:
    """The dataset for ``settings``, from ``cache_dir/listops-<fingerprint>.pt`` when present,
    else generated and written there (atomically: temporary file, then rename)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"listops-{settings.fingerprint()}.pt"
    if path.exists():
        try:
            stored = torch.load(path, weights_only=True)
            splits = [ListOpsSplit(**stored[name]) for name in ("train", "valid", "test")]
        except Exception as error:  # truncated, corrupt or foreign: the data can be made again
            print(f"Note: the ListOps cache {path} is unreadable ({type(error).__name__}); regenerating it",
                  file=sys.stderr)
        else:
            if stored.get("fingerprint") != settings.fingerprint():
                raise ValueError(f"load_or_generate: {path} holds fingerprint {stored.get('fingerprint')}, "
                                 f"not {settings.fingerprint()}")
            return ListOpsData(*splits, settings)
    data = generate(settings)
    cache.mkdir(parents=True, exist_ok=True)
    payload = {"fingerprint": settings.fingerprint(), "settings": json.dumps(dataclasses.asdict(settings))}
    for name in ("train", "valid", "test"):
        payload[name] = getattr(data, name)._asdict()
    handle, temporary = tempfile.mkstemp(dir=cache, prefix=path.name, suffix=".tmp")
    os.close(handle)
    try:
        torch.save(payload, temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return data


def to_text(tokens: torch.Tensor, length: int | None = None) -> str:
    """The expression of one row of ``tokens`` as text (for debugging and examples)."""
    values = tokens.tolist() if length is None else tokens[:length].tolist()
    return " ".join(VOCAB[t] for t in values if t != PAD)
