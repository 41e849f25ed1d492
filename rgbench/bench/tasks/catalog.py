"""The task registry: ``get(name)`` -> a :class:`~rgbench.bench.tasks.base.Task` instance."""

from rgbench.registry import Registry

TASKS = Registry("task")
register = TASKS.register
