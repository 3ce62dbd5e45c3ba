"""The `baseline` stage: a constant prediction per task, scored with the task metric, so a table can be read on scale.

The constant is learned from the training split only: the most frequent training caption (caption), the most frequent
training answer (VQA), the mean training box relative to the image size (grounding), the most frequent training label
(entailment). The stage writes `metrics.json` in the evaluate stage's format (no latency: it runs no model) and
`predictions.jsonl` with each test row's input and reference, which the report uses to print examples.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from distill.errors import UserError

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"

DESCRIPTIONS = {
    "caption": "most frequent training caption",
    "vqa": "most frequent training answer",
    "grounding": "mean training box",
    "entailment": "most frequent training label",
}
"""How each task's constant is chosen (the table's decoding column)."""

INPUT_COLUMNS = {"vqa": "question", "grounding": "region_text", "entailment": "hypothesis"}
"""The text input shown with an example (captioning has only the image)."""


@dataclass
class BaselineConfig:
    """A constant prediction learned from one split and scored on another."""

    task: str
    """caption, vqa, grounding or entailment."""
    data: str
    """Source holding both splits (any `distill.sources` SRC)."""
    train_split: str = "train"
    """Split the constant is learned from."""
    split: str = "test"
    """Split scored."""
    limit: int | None = None
    """Score only the first N rows of `split`."""


def _relative_box(row: dict) -> list[float]:
    from distill.tasks.grounding import original_size

    w, h = original_size(row)
    x0, y0, x1, y1 = (float(v) for v in row["box"])
    return [x0 / w, y0 / h, x1 / w, y1 / h]


def constant_prediction(task, train_rows: Sequence[dict]) -> Any:
    """The task's constant, from the training rows: a text, or for grounding a box relative to the image size."""
    if not train_rows:
        raise UserError("baseline: the training split has no rows")
    if task.name == "grounding":
        boxes = [_relative_box(r) for r in train_rows]
        return [sum(b[i] for b in boxes) / len(boxes) for i in range(4)]
    if task.name == "caption":  # every cleaned reference counts, as a caption model sees them all in training
        texts = [task.reference({"captions": [c]}) for r in train_rows for c in r["captions"] if c and c.strip()]
    else:
        texts = [task.reference(r) for r in train_rows]
    counts = Counter(texts)
    best = max(counts.values())
    return next(t for t in texts if counts[t] == best)  # ties: the first seen, so the choice is deterministic


def _prediction_for(task, constant: Any, row: dict) -> Any:
    if task.name == "grounding":
        from distill.tasks.grounding import original_size

        w, h = original_size(row)
        return [constant[0] * w, constant[1] * h, constant[2] * w, constant[3] * h]
    return task.decode(constant, row)  # the text as the task scores it (entailment: the answer word)


def reference_text(task, row: dict) -> str:
    """What a human reads as the row's right answer (first caption, VQA target, box, label word)."""
    if task.name == "grounding":
        return "[" + ", ".join(f"{v:.0f}" for v in row["box"]) + "]"
    return task.reference(row)  # caption: the first reference, cleaned


def run_baseline(cfg: BaselineConfig, out: Path) -> dict[str, Any]:
    """The baseline stage function: writes `metrics.json` and `predictions.jsonl` into `out`."""
    from distill.sources import open_source
    from distill.tasks import get_task

    task = get_task(cfg.task)
    train_ds = open_source(cfg.data, cfg.train_split, None, task)
    if task.name != "grounding":  # only grounding needs the image (its size)
        train_ds = train_ds.remove_columns("image")
    train = [dict(r) for r in train_ds]
    constant = constant_prediction(task, train)
    rows = [dict(r) for r in open_source(cfg.data, cfg.split, None, task, limit=cfg.limit)]
    preds = [_prediction_for(task, constant, r) for r in rows]
    metrics = task.evaluate(preds, rows)
    metric = next(iter(metrics))
    shown = ("[" + ", ".join(f"{v:.2f}" for v in constant) + "] x image size") if task.name == "grounding" else constant
    record = {
        "task": task.name, "model": f"constant: {shown}", "model_type": "baseline", "decoding": DESCRIPTIONS[task.name],
        "metric": metric, "score": metrics[metric], "metrics": metrics,
        "metric_implementation": task.metric_implementation(rows), "num_samples": len(rows),
        "ms_per_sample": None, "constant": constant,
    }
    out = Path(out)
    with (out / PREDICTIONS_FILE).open("w") as f:
        for row, pred in zip(rows, preds):
            f.write(json.dumps({"id": row["id"], "input": row.get(INPUT_COLUMNS.get(task.name, ""), ""),
                                "reference": reference_text(task, row), "output": shown, "prediction": pred}) + "\n")
    (out / METRICS_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record
