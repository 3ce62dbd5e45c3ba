"""Stage kinds for `test_parallel.py`, in a module of their own: a `--jobs` child unpickles them by module name."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from pipelines.stage_kind import StageKind


@dataclass
class MeetConfig:
    """Writes `<name>.started` into `board`, then waits (up to `patience` s) until every stage in `meet` has started
    too: two stages that name each other finish only if they run at the same time."""

    board: str = ""
    after: tuple[str, ...] = ()
    """Folders of the stages this one references (`${stages.X}`): each must be complete when it starts."""
    meet: tuple[str, ...] = ()
    outlast: tuple[str, ...] = ()
    """Stages whose end (`<name>.ended` in `board`) this one waits for before its own `sleep`: it outlasts them."""
    patience: float = 60.0
    sleep: float = 0.0
    fail: bool = False
    tqdm: bool = False
    """Show a progress bar: tqdm creates a multiprocessing lock (a semaphore the child must release at exit)."""


def _meet(cfg: MeetConfig, out: Path) -> None:
    name = out.name.rsplit("-", 1)[0]
    board = Path(cfg.board)
    start = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the machine
    missing = [f for f in cfg.after if not (Path(f) / "stage_complete.json").exists()]
    if missing:
        raise RuntimeError(f"{name} started before {', '.join(missing)} was complete")
    (board / f"{name}.started").write_text(str(os.getpid()))
    while not all((board / f"{other}.started").exists() for other in cfg.meet):
        if time.monotonic() - start > cfg.patience:
            raise TimeoutError(f"{name}: {', '.join(cfg.meet)} never started while it ran")
        time.sleep(0.01)
    while not all((board / f"{other}.ended").exists() for other in cfg.outlast):
        if time.monotonic() - start > cfg.patience:
            raise TimeoutError(f"{name}: {', '.join(cfg.outlast)} never ended while it ran")
        time.sleep(0.01)
    time.sleep(cfg.sleep)
    if cfg.tqdm:
        for _ in tqdm(range(3), desc=name):
            pass
    if cfg.fail:
        raise RuntimeError(f"{name} failed on purpose")
    (out / "run.json").write_text(json.dumps({"start": start, "end": time.monotonic(),
                                              "threads": torch.get_num_threads()}))
    (board / f"{name}.ended").write_text("")


MEET = StageKind("meet", MeetConfig, _meet)
TIMED = StageKind("timed", MeetConfig, _meet, exclusive=True)
LIGHT = StageKind("light", MeetConfig, _meet, light=True)


def main(folder: str, sleep: float = 0.0) -> None:
    """Two meeting stages with progress bars, `--jobs 2`, in a fresh interpreter (its shutdown is under test); each
    sleeps `sleep` seconds once both have started."""
    from pipelines import stages

    stages.register_stage_kind(MEET)
    pipe = stages.parse_pipeline({"name": "p", "stages": [
        {"name": "b", "kind": "meet", "config": {"board": folder, "meet": ["c"], "tqdm": True, "sleep": sleep}},
        {"name": "c", "kind": "meet", "config": {"board": folder, "meet": ["b"], "tqdm": True, "sleep": sleep}}]})
    stages.run_pipeline(pipe, Path(folder) / "out", jobs=2)


if __name__ == "__main__":  # forkserver children import the main module: only the parent runs this
    import sys

    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 0.0)
