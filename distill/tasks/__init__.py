"""The tasks shared by the distill (teacher) and student stages: `get_task(name)`, and `register_task(cls)` to add one.

A task is one `Task` subclass (`distill.tasks.base`): the only code that knows what its rows hold, its prompt,
targets, decoding, metric and baseline. Registering a subclass makes every stage (distill, train-student, evaluate,
baseline) and the canonical schema (`canonical_columns`) know it.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from distill.errors import UserError
from distill.tasks.base import Task
from distill.tasks.caption import CaptionTask
from distill.tasks.entailment import EntailmentTask
from distill.tasks.grounding import GroundingTask
from distill.tasks.vqa import VQATask

TASKS: dict[str, type[Task]] = {}
"""Registered tasks by name, in registration order (the built-in four first)."""

BASE_COLUMNS = ("id", "image")
"""Canonical columns every task's rows hold."""


def register_task(cls: type[Task]) -> type[Task]:
    """Register a `Task` subclass under its default `name` (usable as a class decorator); returns `cls`.

    Re-registering a name replaces the earlier class (a test or notebook may define its task twice)."""
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TypeError(f"register_task expects a Task subclass, got {cls!r}")
    name = next((f.default for f in dataclasses.fields(cls) if f.name == "name"), dataclasses.MISSING)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a default `name` to be registered")
    TASKS[name] = cls
    return cls


for _cls in (CaptionTask, VQATask, GroundingTask, EntailmentTask):
    register_task(_cls)


def get_task(name: str, **overrides: Any) -> Task:
    """The task `name` with OFA / NARVL defaults; `overrides` replace fields (e.g. `resolution=64`)."""
    cls = TASKS.get(name)
    if cls is None:
        raise UserError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise UserError(f"task {name} has no setting {unknown}; settings: {sorted(fields - {'name'})}")
    return cls(**overrides)


def task_names() -> list[str]:
    """The registered task names."""
    return list(TASKS)


def _tasks() -> list[Task]:
    return [get_task(n) for n in TASKS]


def canonical_columns() -> tuple[str, ...]:
    """Every column of the canonical schema, in output order: `id`, `image`, then each registered task's."""
    return tuple(dict.fromkeys((*BASE_COLUMNS, *(c for t in _tasks() for c in t.canonical_columns()))))


def reference_columns() -> tuple[str, ...]:
    """Every registered task's reference columns: what a distilled row carries over from its source when present."""
    return tuple(dict.fromkeys(c for t in _tasks() for c in t.reference_columns))


__all__ = ["Task", "TASKS", "get_task", "register_task", "task_names", "canonical_columns", "reference_columns",
           "CaptionTask", "VQATask", "GroundingTask", "EntailmentTask"]
