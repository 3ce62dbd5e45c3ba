"""The teacher's decoding settings of a `distill` run: the model's settings for the task (`Model.settings`) with the
config's explicit values over them, and their JSON record (part of the run identity)."""
from __future__ import annotations

from typing import Any

from distill.config import DistillConfig

OVERRIDES = ("num_beams", "max_new_tokens", "no_repeat_ngram_size", "num_return_sequences", "vqa_mode")
"""DistillConfig fields that replace the model's default for the task when set."""


def _record(gen: dict[str, Any]) -> dict[str, Any]:
    record = {k: (v if isinstance(v, (int, float, str, bool, type(None), list)) else f"<{type(v).__name__}>")
              for k, v in gen.items()}
    if "candidates" in gen:
        record["candidates"] = f"{len(gen['candidates'])} answers (see answers_sha256)"
    return record


def generation_settings(config: DistillConfig, task, teacher, candidates: list[str] | None) -> tuple[dict, dict]:
    """(decoding settings for `teacher.infer`, their JSON record for the manifest)."""
    gen = teacher.settings(task, candidates, {name: getattr(config, name) for name in OVERRIDES})
    return gen, _record(gen)
