"""The trainer's checkpoint folders: `OUT/checkpoints/step_XXXXXXXX`, each written to a `.tmp` name and renamed, so
that a checkpoint is complete or absent; the best-so-far weights of `select_best` (`OUT/checkpoints/best/`); and the
log truncation of a resumed run."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_model, save_model

from distill.errors import UserError

__all__ = ["BEST_DIR", "CHECKPOINT_DIR", "DATA_STATE", "LOG_FILE", "STATE_FILE", "BestModel", "latest_checkpoint",
           "load_best",
           "save_checkpoint", "truncate_log"]

CHECKPOINT_DIR = "checkpoints"
LOG_FILE = "log.jsonl"
STATE_FILE = "trainer_state.json"
BEST_DIR = "best"
"""`OUT/checkpoints/best/step_XXXXXXXX.safetensors`: the weights of the best evaluation so far (`select_best`)."""
DATA_STATE = "data_state_{rank}.pt"
"""A streamed training set's position (`StatefulDataLoader.state_dict()`), one file per process."""


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The most recent complete checkpoint folder (`checkpoints/step_XXXXXXXX`), or None."""
    root = Path(output_dir) / CHECKPOINT_DIR
    done = sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp")
                  and (p / STATE_FILE).exists())
    return done[-1] if done else None


def save_checkpoint(accelerator, cfg: Any, step: int, extra: dict[str, Any],
                    data_state: Callable[[], Any] | None = None) -> None:
    """Write `checkpoints/step_XXXXXXXX` (complete or absent); `data_state()`: this process's data position (a
    streamed training set), saved as `data_state_<rank>.pt`."""
    root = Path(cfg.output_dir) / CHECKPOINT_DIR
    final = root / f"step_{step:08d}"
    tmp = root / f"step_{step:08d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # every process writes its own RNG state
    if data_state is not None:
        torch.save(data_state(), tmp / DATA_STATE.format(rank=accelerator.process_index))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, **extra}, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)  # atomic: a checkpoint folder is complete or absent
        olds = sorted(p for p in root.glob("step_*") if not p.name.endswith(".tmp"))
        for old in olds[: max(0, len(olds) - cfg.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines past `step` (written by a killed run after its last checkpoint)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


class BestModel:
    """The best evaluation of a run by one metric (higher is better, as fairseq's
    `--maximize-best-checkpoint-metric`), its weights kept in `OUT/checkpoints/best/step_XXXXXXXX.safetensors`.

    Exact resume: the record goes into each checkpoint's state; a resumed run starts from the record of the
    checkpoint it restores and deletes best files written after it (the replayed steps write them again), so the
    file on disk always belongs to the record. A new best deletes the older file unless a checkpoint still refers to
    it (`protected`)."""

    def __init__(self, metric: str, output_dir: str | os.PathLike, is_main: bool, record: dict | None = None):
        self.metric, self.is_main = metric, is_main
        self.root = Path(output_dir) / CHECKPOINT_DIR / BEST_DIR
        self.value: float | None = None if record is None else float(record["value"])
        self.step: int | None = None if record is None else int(record["step"])
        self.metrics: dict[str, float] = {} if record is None else dict(record.get("metrics", {}))
        self.protected = self.step
        if is_main:
            self._prune()

    def path(self, step: int) -> Path:
        return self.root / f"step_{step:08d}.safetensors"

    def _prune(self) -> None:
        keep = {self.path(s) for s in (self.step, self.protected) if s is not None}
        for f in self.root.glob("step_*.safetensors"):
            if f not in keep:
                f.unlink()

    def offer(self, metrics: dict[str, float], step: int, model: torch.nn.Module) -> bool:
        """Keep `model`'s weights when `metrics[metric]` beats the best so far; True when it did."""
        if self.metric not in metrics:
            raise UserError(f"`select_best` {self.metric}: the evaluation reports {', '.join(sorted(metrics))}")
        value = float(metrics[self.metric])
        if self.value is not None and not value > self.value:
            return False
        self.value, self.step, self.metrics = value, step, dict(metrics)
        if self.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.root / f"step_{step:08d}.tmp"
            save_model(model, str(tmp), force_contiguous=True)  # tied weights stored once
            os.replace(tmp, self.path(step))
            self._prune()
        return True

    def state(self) -> dict[str, Any] | None:
        """The record a checkpoint stores."""
        return None if self.step is None else {"metric": self.metric, "value": self.value, "step": self.step,
                                               "metrics": self.metrics}

    def committed(self) -> None:
        """A checkpoint holding `state()` is complete: from now on a resume needs this best file, not the older one
        (pruned only now, so that a crash while the checkpoint is written leaves the previous one usable)."""
        self.protected = self.step
        if self.is_main:
            self._prune()

    def record(self) -> dict[str, Any] | None:
        """`{metric, value, step, metrics, weights}` of the best evaluation (None before any)."""
        if self.step is None:
            return None
        return {"metric": self.metric, "value": self.value, "step": self.step, "metrics": self.metrics,
                "weights": str(self.path(self.step))}


def load_best(model: torch.nn.Module, record: dict[str, Any]) -> torch.nn.Module:
    """`model` with the weights of a `BestModel.record()` loaded in place."""
    load_model(model, record["weights"])
    return model
