"""The per-rank generation loop of `distill.run`, generic over models (`distill.seam.Model`):
DataLoader workers decode images (`load_image`, EXIF applied), flag bad rows (`Task.bad_row_reason`) and call
`teacher.prepare`; the main process calls `teacher.infer` and writes the shards.

Each batch is a slice of one shard, so a shard's batches (and therefore its rows, padding included) are the same
whatever the number of processes or the point a crashed run resumed from (flushes happen on batch boundaries).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from distill import shards as sh
from distill.config import DistillConfig
from distill.schema import output_row
from distill.seam import Model, load_row_image
from distill.workers import DieWithParent


@dataclass
class ShardJob:
    """What one rank needs to generate its shards."""

    config: DistillConfig
    """The run's configuration (batch size, flush interval, workers, output folder...)."""
    task: Any
    """The `distill.tasks.Task`."""
    ds: Any
    """The canonical source (`datasets.Dataset`, images undecoded)."""
    plan: list[tuple[int, int]]
    """Source row range of every shard (`distill.shards.plan_shards`)."""
    features: Any
    """The output rows' `datasets.Features` (`distill.schema.output_features`)."""
    teacher: Model
    """The teacher (weights not loaded yet: `generate_shards` loads them when there is work)."""
    settings: dict
    """The teacher's decoding settings (`distill.generation.generation_settings`)."""
    state: Any
    """accelerate's process state of this rank."""


# ---------------------------------------------------------------------------------------------------- workers
class _Rows:
    """The source as a map-style dataset of `(index, row)`, fetched a batch at a time (`__getitems__`)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitems__(self, indices: list[int]) -> list[tuple[int, dict]]:
        return list(zip(indices, self.ds.__getitems__(indices)))

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]


class _Collate:
    """Runs in the DataLoader workers: decode images, flag bad rows, build prompts, `teacher.prepare` the rest."""

    def __init__(self, task, teacher: Model, images: bool):
        self.task, self.teacher, self.images = task, teacher, images

    def __call__(self, items: list[tuple[int, dict]]) -> dict:
        good, bad, pils = [], [], []
        for index, row in items:
            pil, reason = load_row_image(row, self.task)
            if reason is not None:
                bad.append((index, row["id"], reason))
                continue
            image = row["image"] or {}
            if self.images and image.get("bytes") is None:  # store the file's bytes: the output is self-contained
                with open(image["path"], "rb") as fh:
                    image = {"bytes": fh.read(), "path": image.get("path")}
            good.append((index, dict(row, image=image, prompt=self.task.prompt(row))))
            pils.append(pil)
        batch: dict[str, Any] = {"indices": [i for i, _ in items], "good": good, "bad": bad}
        if good:
            batch["inputs"] = self.teacher.prepare([r for _, r in good], pils, self.task)
        return batch


def _batches(plan, mine: list[int], starts: dict[int, int], batch_size: int) -> list[list[int]]:
    """Index lists of this rank's pending work; a batch never crosses a shard (batch i of a shard is fixed)."""
    out = []
    for s in mine:
        lo, hi = plan[s]
        for b in range(lo + starts[s], hi, batch_size):
            out.append(list(range(b, min(b + batch_size, hi))))
    return out


# ---------------------------------------------------------------------------------------------------- generation
class _ShardOutput:
    """The writers of this rank's shards: which one is open, quarantine, flushes and completion."""

    def __init__(self, job: ShardJob, mine: list[int]):
        self.job, self.plan = job, job.plan
        schema = job.features.arrow_schema
        self.writers = {s: sh.ShardWriter(Path(job.config.out), s, schema) for s in mine}
        self.starts = {s: w.probe() for s, w in self.writers.items()}
        bs = job.config.batch_size
        self.flush_rows = max(bs, -(-job.config.flush_every // bs) * bs)
        self.current, self.since_flush = None, 0

    def complete_finished(self) -> None:
        """Shards whose rows were all done before a crash at completion: just complete them."""
        for s, w in self.writers.items():
            lo, hi = self.plan[s]
            if lo + self.starts[s] >= hi:
                w.resume()
                w.complete(hi - lo)

    def writer(self, first_index: int) -> tuple[sh.ShardWriter, int]:
        s = first_index // self.job.config.shard_size
        if self.current != s:
            self.current, self.since_flush = s, 0
            self.writers[s].resume()
        return self.writers[s], s

    def batch_done(self, s: int, indices: list[int]) -> None:
        lo, hi = self.plan[s]
        w = self.writers[s]
        self.since_flush += len(indices)
        done = indices[-1] + 1 - lo
        if indices[-1] + 1 >= hi:
            w.complete(done)
            self.current = None
        elif self.since_flush >= self.flush_rows:
            w.flush(done)
            self.since_flush = 0

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


def _loader(job: ShardJob, batches: list[list[int]]) -> DataLoader:
    c = job.config
    return DataLoader(
        _Rows(job.ds), batch_sampler=batches, collate_fn=_Collate(job.task, job.teacher, c.images),
        num_workers=c.num_workers, persistent_workers=False, prefetch_factor=4 if c.num_workers else None,
        worker_init_fn=DieWithParent(),  # a killed run leaves no orphan workers behind
    )


def generate_shards(job: ShardJob, mine: list[int]) -> int:
    """Generate this rank's shards `mine` (resuming partial ones); returns the number of rows written this run."""
    if not mine:
        return 0  # nothing pending for this rank: no model load
    output = _ShardOutput(job, mine)
    job.teacher.load()
    batches = _batches(job.plan, mine, output.starts, job.config.batch_size)
    output.complete_finished()
    bar = tqdm(total=sum(len(b) for b in batches), unit="row", desc=f"distill {job.task.name}", dynamic_ncols=True,
               smoothing=0.1, disable=not (job.config.progress and job.state.is_main_process))
    written = 0
    try:
        for batch in _loader(job, batches):
            w, s = output.writer(batch["indices"][0])
            for index, row_id, reason in batch["bad"]:
                w.quarantine(row_id, index, reason)
            if batch["good"]:
                nbests = job.teacher.infer(batch["inputs"], job.task, job.settings)
                prompts = batch["inputs"].get("prompts") or [None] * len(nbests)  # a family's own prompts
                rows = [output_row(job.task, row, index, best, job.features, prompt)
                        for (index, row), best, prompt in zip(batch["good"], nbests, prompts)]
                w.add(rows)
                written += len(rows)
            output.batch_done(s, batch["indices"])
            bar.update(len(batch["indices"]))
    finally:
        bar.close()
        output.close()
    return written
