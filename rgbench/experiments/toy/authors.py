"""The authors' toy figures: their code, measured (issue 7), after 15,000 Adam steps
(:data:`rgbench.experiments.toy.scales.AUTHORS_STEPS`).

structure -> estimator -> (mean entry gradient std at logits 0 for a 3-sample estimate,
final loss). Their spanning-tree loss is broken (docs/design.md §7): no kruskal figures.
"""

AUTHORS_TOY = {
    "binary-tree": {"e-reinforce": (3.08, -8.63), "t-reinforce": (2.25, -9.49), "e-loo": (0.65, -9.94),
                    "t-loo": (0.47, -9.98), "relax": (2.12, -9.97)},
    "matching": {"e-reinforce": (0.71, -9.42), "t-reinforce": (0.20, -9.93), "e-loo": (0.66, -9.98),
                 "t-loo": (0.19, -9.99), "relax": (0.19, -9.99)},
    "cle": {"e-reinforce": (1.39, -8.34), "t-reinforce": (0.49, -8.96), "e-loo": (0.45, -8.99),
            "t-loo": (0.16, -9.00), "relax": (0.47, -9.00)},
}  # fmt: skip
