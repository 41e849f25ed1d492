"""Structured distributions defined by recursive algorithms on exponential noise.

``get(name)`` returns the class registered under ``name`` (or an alias); ``names()`` lists
the canonical names.
"""

# Importing each structure module registers it.
from rgbench.distributions import arborescence, binary_tree, matching, spanning_tree  # noqa: F401
from rgbench.distributions.base import Enumeration, StructuredDistribution, TraceSample
from rgbench.distributions.catalog import DISTRIBUTIONS
from rgbench.distributions.permutation import Permutation
from rgbench.distributions.topk import TopK


def get(name: str) -> type[StructuredDistribution]:
    """The distribution class registered as ``name``; ``ValueError`` listing valid names."""
    return DISTRIBUTIONS.get(name)


def names() -> list[str]:
    return DISTRIBUTIONS.names()


__all__ = [
    "Enumeration",
    "Permutation",
    "StructuredDistribution",
    "TopK",
    "TraceSample",
    "get",
    "names",
]
