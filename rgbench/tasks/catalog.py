"""The task registry: ``get(name)`` -> a :class:`~rgbench.tasks.base.Task` instance."""

from rgbench.registry import Registry

TASKS = Registry("task")
register = TASKS.register
