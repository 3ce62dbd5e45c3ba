"""The teacher's decoding settings of a `distill` run: the task's defaults for the teacher, the config's explicit
values over them, and their JSON record (part of the run identity)."""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from distill.config import DistillConfig
from distill.errors import UserError
from distill.ofa import fairseq_rules
from distill.tasks import task_options

OVERRIDES = ("num_beams", "max_new_tokens", "no_repeat_ngram_size")
"""DistillConfig fields that replace the task's default when set."""
TASK_OPTIONS = ("vqa_mode",)
"""DistillConfig fields that only some tasks take (`Task.options`)."""


def _record(gen: dict[str, Any], task, candidates: Sequence[str] | None) -> dict[str, Any]:
    record = {k: (v if isinstance(v, (int, float, str, bool, type(None), list)) else f"<{type(v).__name__}>")
              for k, v in gen.items()}
    if "candidates" in gen:
        record["candidates"] = f"{len(gen['candidates'])} answers (see answers_sha256)"
    if "prefix_allowed_tokens_fn" in gen:
        record["prefix_allowed_tokens_fn"] = (
            f"answer trie over {len(candidates)} answers" if candidates is not None else f"{task.name} constraint")
    return record


def generation_settings(config: DistillConfig, task, teacher, candidates: list[str] | None) -> tuple[dict, dict]:
    """(decoding kwargs for `teacher.infer`, their JSON record for the manifest): the teacher's settings for the
    task (`Teacher.generation_settings`: OFA's evaluation settings with the task's constraint), overridden by the
    config's explicit values, plus the task's own options."""
    gen = teacher.generation_settings(task, candidates)
    for name in OVERRIDES:
        value = getattr(config, name)
        if value is not None:
            gen[name] = value
    limit = task.max_return_sequences(gen)
    if config.num_return_sequences > limit:
        raise UserError(f"`num_return_sequences` {config.num_return_sequences} exceeds `num_beams` {limit}")
    gen["num_return_sequences"] = config.num_return_sequences
    fairseq_rules.check_settings(gen)  # e.g. --max-new-tokens below grounding's 4 tokens + EOS
    defaults = {f.name: f.default for f in dataclasses.fields(DistillConfig) if f.name in TASK_OPTIONS}
    options = task_options(task, {k: getattr(config, k) for k in TASK_OPTIONS}, defaults)
    record = _record(gen, task, candidates)
    gen.update(options)
    record.update(options)
    return gen, record
