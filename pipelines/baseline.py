"""The `baseline` stage: a constant prediction per task, scored with the task metric, so a table can be read on scale.

The constant is learned from the training split only, by the task (`Task.baseline_constant`: the most frequent
training caption, answer or label; grounding: the mean training box relative to the image size). The stage writes `metrics.json` in the evaluate stage's format (no latency: it runs no model) and
`predictions.jsonl` with each test row's input and reference, which the report uses to print examples.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from distill.errors import UserError
from distill.sources import open_source
from distill.tasks import get_task

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"


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


def constant_prediction(task, train_rows: Sequence[dict]) -> Any:
    """The task's constant, from the training rows (`Task.baseline_constant`)."""
    if not train_rows:
        raise UserError("baseline: the training split has no rows")
    return task.baseline_constant(train_rows)


def run_baseline(cfg: BaselineConfig, out: Path) -> dict[str, Any]:
    """The baseline stage function: writes `metrics.json` and `predictions.jsonl` into `out`."""
    task = get_task(cfg.task)
    train_ds = open_source(cfg.data, cfg.train_split, None, task)
    if not task.baseline_needs_images():  # grounding needs the images (their size), the others do not
        train_ds = train_ds.remove_columns("image")
    train = [dict(r) for r in train_ds]
    constant = constant_prediction(task, train)
    rows = [dict(r) for r in open_source(cfg.data, cfg.split, None, task, limit=cfg.limit)]
    preds = [task.baseline_prediction(constant, r) for r in rows]
    metrics = task.evaluate(preds, rows)
    metric = next(iter(metrics))
    shown = task.baseline_shown(constant)
    record = {
        "task": task.name, "model": f"constant: {shown}", "model_type": "baseline", "decoding": task.baseline_description,
        "metric": metric, "score": metrics[metric], "metrics": metrics,
        "metric_implementation": task.metric_implementation(rows), "num_samples": len(rows),
        "ms_per_sample": None, "constant": constant,
    }
    out = Path(out)
    with (out / PREDICTIONS_FILE).open("w") as f:
        for row, pred in zip(rows, preds):
            text = task.text_columns[0] if task.text_columns else None  # captioning has only the image
            f.write(json.dumps({"id": row["id"], "input": row.get(text, "") if text else "",
                                "reference": task.reference_text(row), "output": shown, "prediction": pred}) + "\n")
    (out / METRICS_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record
