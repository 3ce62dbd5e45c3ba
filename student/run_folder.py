"""The output folder of a training run (`train-student`, `train-teacher`): one usable model folder. With
`select_best` it holds the model of the best evaluation, the last step's model is kept in `last/`, and each
`train_config.json` says under `selected` which one it is."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from student.checkpoints import load_best
from student.model_folder import save_model_folder
from student.train_config import TrainResult

__all__ = ["LAST_DIR", "write_run_folder"]

LAST_DIR = "last"
"""With `select_best`: the sub-folder holding the last step's model."""


def write_run_folder(result: TrainResult, processor: Any, out: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Save the trained model (and, with a best evaluation, the last one beside it) with `record` as
    `train_config.json`; `record["eval"]` is the final (last-step) evaluation."""
    out = Path(out)
    if result.best is None:
        return save_model_folder(result.model, processor, out, record)
    best = {k: result.best[k] for k in ("metric", "value", "step")}
    last = {"step": result.step, "eval": record.get("eval", {})}
    save_model_folder(result.model, processor, out / LAST_DIR,
                      {**record, "selected": {"model": "the last step", "best": {**best, "folder": ".."}}})
    load_best(result.model, result.best)
    return save_model_folder(result.model, processor, out, {
        **record, "eval": result.best.get("metrics", {}),
        "selected": {"model": f"the best evaluation by {best['metric']}", **best,
                     "last": {**last, "folder": LAST_DIR}}})
