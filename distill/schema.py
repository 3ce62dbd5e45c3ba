"""The row schema of a distilled dataset (see `distill.run`): its `datasets` features and one output row."""
from __future__ import annotations

from typing import Any

from datasets import Features, Image, List, Value

from distill.tasks import reference_columns
from distill.prediction import Prediction


def output_features(source_features, task, images: bool, nbest: bool, teacher_prompt: bool = False) -> Features:
    """`id, task, prompt` (the task's OFA prompt, what the student reads), `teacher_prompt` (only for a teacher
    prompted in its own words, `Teacher.own_prompts`), the task's text inputs, the teacher's target (`target`,
    `target_ids`, `teacher_logprob`, `target_len`, then the task's canonical prediction columns, e.g. grounding's
    `target_box`), the source's references, `source_index`, `image_path`, then `image` and `nbest` when asked for."""
    feats = {"id": Value("string"), "task": Value("string"), "prompt": Value("string")}
    if teacher_prompt:
        feats["teacher_prompt"] = Value("string")
    for col in task.prompt_columns():
        feats[col] = Value("string")
    feats.update({
        "target": Value("string"), "target_ids": List(Value("int32")), "teacher_logprob": Value("float32"),
        "target_len": Value("int32"),
    })
    feats.update(task.prediction_features())
    for col in reference_columns():
        if col in source_features:
            feats[col] = source_features[col]
    feats["source_index"] = Value("int64")
    feats["image_path"] = Value("string")
    if images:
        feats["image"] = Image()
    if nbest:
        feats["nbest"] = List({"text": Value("string"), "logprob": Value("float32")})
    return Features(feats)


def output_row(task, row: dict, index: int, best: list[Prediction], features,
               teacher_prompt: str | None = None) -> dict[str, Any]:
    """The distilled row of source row `index` from its teacher predictions (`best[0]` is the target)."""
    top = best[0]
    out = {"id": row["id"], "task": task.name, "prompt": row["prompt"]}
    if "teacher_prompt" in features:
        out["teacher_prompt"] = teacher_prompt
    for col in task.prompt_columns():
        out[col] = row.get(col) or ""
    out.update({"target": top.text, "target_ids": top.ids, "teacher_logprob": top.logprob,
                "target_len": len(top.ids)})
    out.update(task.prediction_columns(top))
    for col in reference_columns():
        if col in features:
            out[col] = row.get(col)
    image = row.get("image") or {}
    out["source_index"], out["image_path"] = index, row.get("image_path", image.get("path"))
    if "image" in features:
        out["image"] = {"bytes": image.get("bytes"), "path": image.get("path")}
    if "nbest" in features:
        out["nbest"] = [{"text": p.text, "logprob": p.logprob} for p in best]
    return out
