"""The task catalog: a name-to-TaskSpec registry filled from the top-level ``data_manifests/tasks/`` (``synthimg.data_manifests`` once installed).

The data ships as package data, so an installed wheel has it too. Other tasks (the toy
world's, a user's) are added at run time with :func:`register_task`.
"""

from __future__ import annotations

import difflib
import json

from synthimg.errors import SynthimgError
from synthimg.manifests import manifests
from synthimg.tasks.spec import TaskSpec

_TASKS: dict[str, TaskSpec] = {}
_ALIASES: dict[str, str] = {}
_LOADED = False


def _load_builtin() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    root = manifests() / "tasks"
    for name in json.loads((root / "index.json").read_text()):
        folder = root / name
        meta = json.loads((folder / "task.json").read_text())
        meta["classnames"] = json.loads((folder / "classnames.json").read_text())
        meta["templates"] = json.loads((folder / "templates.json").read_text())
        register_task(TaskSpec.model_validate(meta))


def register_task(spec: TaskSpec, replace: bool = False) -> TaskSpec:
    """Add a task to the catalog (for example the toy world's tasks)."""
    if spec.name in _TASKS and not replace:
        raise SynthimgError(f"task {spec.name!r} is already registered")
    _TASKS[spec.name] = spec
    for alias in spec.aliases:
        _ALIASES[alias] = spec.name
    return spec


def list_tasks() -> list[str]:
    """Names of all registered tasks, in catalog order."""
    _load_builtin()
    return list(_TASKS)


def get_task(name: str) -> TaskSpec:
    """Look a task up by name or alias; an unknown name is one error line listing the choices."""
    _load_builtin()
    key = _ALIASES.get(name, name)
    if key in _TASKS:
        return _TASKS[key]
    close = difflib.get_close_matches(name, list(_TASKS) + list(_ALIASES), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise SynthimgError(f"unknown task {name!r}{hint}; choose from: {', '.join(_TASKS)}")
