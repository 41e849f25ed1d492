"""rgbench: gradient estimators for structured discrete latent variables.

Data flows task -> distribution -> estimator -> harness -> report; each stage is a
sub-package of the same name.
"""

__version__ = "0.1.0"
