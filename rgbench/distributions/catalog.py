"""The distribution registry: ``get(name)`` -> class, ``names()`` -> canonical names."""

from rgbench.registry import Registry

DISTRIBUTIONS = Registry("distribution")
register = DISTRIBUTIONS.register
