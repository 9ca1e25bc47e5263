"""Target tasks: class names, zero-shot templates, category words and evaluation splits."""

from synthimg.tasks.catalog import get_task, list_tasks, register_task
from synthimg.tasks.spec import TaskSpec, render

__all__ = ["TaskSpec", "get_task", "list_tasks", "register_task", "render"]
