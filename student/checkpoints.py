"""The trainer's checkpoint folders: `OUT/checkpoints/step_XXXXXXXX`, each written to a `.tmp` name and renamed, so
that a checkpoint is complete or absent; and the log truncation of a resumed run."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["CHECKPOINT_DIR", "LOG_FILE", "STATE_FILE", "DATA_STATE", "latest_checkpoint", "save_checkpoint", "truncate_log"]

CHECKPOINT_DIR = "checkpoints"
LOG_FILE = "log.jsonl"
STATE_FILE = "trainer_state.json"
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
