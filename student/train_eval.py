"""The held-out rows a training run evaluates on, the same for `train-student` and `train-teacher` and for every
kind of source: `eval_data`, else the source a distilled dataset was distilled from (its manifest), else `data`
itself, at `eval_split`; a default source without that split means training without evaluation, with a note."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill.errors import UserError
from distill.sources import open_source

__all__ = ["eval_rows", "eval_source"]


def eval_source(cfg: Any) -> str:
    """`cfg.eval_data`, else the `source.data` recorded in a distill output's manifest, else `cfg.data`."""
    if cfg.eval_data:
        return cfg.eval_data
    manifest = Path(cfg.data) / "manifest.json"
    if manifest.is_file():  # a distill output: evaluate on the source it was distilled from
        recorded = json.loads(manifest.read_text()).get("source", {}).get("data")
        if recorded:
            return recorded
    return cfg.data


def eval_rows(cfg: Any, task) -> list[dict] | None:
    """The first `eval_limit` rows of the evaluation split, or None (with a note) when the default source lacks it;
    an `eval_data` given explicitly must have it."""
    try:
        ds = open_source(eval_source(cfg), cfg.eval_split, None, task, limit=cfg.eval_limit)
    except UserError as exc:
        if cfg.eval_data:  # asked for explicitly: a bad split is an error
            raise
        print(f"note: no evaluation ({exc})")
        return None
    return [dict(r) for r in ds]
