"""OFA task definitions shared by the distill (teacher) and student stages: `get_task(name)`."""
from __future__ import annotations

import dataclasses
from typing import Any

from distill.errors import UserError
from distill.tasks.base import Task
from distill.tasks.caption import CaptionTask
from distill.tasks.entailment import EntailmentTask
from distill.tasks.grounding import GroundingTask
from distill.tasks.vqa import VQATask

TASKS: dict[str, type[Task]] = {
    "caption": CaptionTask,
    "vqa": VQATask,
    "grounding": GroundingTask,
    "entailment": EntailmentTask,
}


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


__all__ = ["Task", "TASKS", "get_task", "CaptionTask", "VQATask", "GroundingTask", "EntailmentTask"]
