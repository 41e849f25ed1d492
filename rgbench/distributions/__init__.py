"""Structured distributions defined by recursive algorithms on exponential noise.

``get(name)`` returns the class registered under ``name`` (or an alias); ``names()`` lists
the canonical names.
"""

from rgbench.distributions.base import Enumeration, StructuredDistribution, TraceSample
from rgbench.distributions.catalog import DISTRIBUTIONS

# Import order is registration order, which names(), the CLI and the reports follow.
from rgbench.distributions.topk import TopK  # noqa: I001
from rgbench.distributions.permutation import Permutation
from rgbench.distributions.matching import GreedyMatching
from rgbench.distributions.spanning_tree import SpanningTree
from rgbench.distributions.arborescence import Arborescence, ArborescenceTrace
from rgbench.distributions.binary_tree import BinaryTree

def get(name: str) -> type[StructuredDistribution]:
    """The distribution class registered as ``name``; ``ValueError`` listing valid names."""
    return DISTRIBUTIONS.get(name)


def names() -> list[str]:
    return DISTRIBUTIONS.names()


__all__ = [
    "Arborescence",
    "ArborescenceTrace",
    "BinaryTree",
    "Enumeration",
    "GreedyMatching",
    "Permutation",
    "SpanningTree",
    "StructuredDistribution",
    "TopK",
    "TraceSample",
    "get",
    "names",
]
