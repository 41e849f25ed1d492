"""Tasks: seeded objectives on structured variables, and the instances they are posed on.

``get(name)`` returns a :class:`Task` (``quadratic``, ``linear``, ``match``);
``task.build(dist, generator)`` draws its objective for one distribution instance;
:func:`make_instance` draws the instance's logits.
"""

from rgbench.bench.tasks import objectives  # noqa: F401  (registers the built-in tasks)
from rgbench.bench.tasks.base import StructuredObjective, Task
from rgbench.bench.tasks.catalog import TASKS
from rgbench.bench.tasks.instances import make_instance


def get(name: str) -> Task:
    """The task registered as ``name``; ``ValueError`` listing the valid names."""
    return TASKS.get(name)()


def names() -> list[str]:
    return TASKS.names()


__all__ = ["StructuredObjective", "TASKS", "Task", "get", "make_instance", "names"]
