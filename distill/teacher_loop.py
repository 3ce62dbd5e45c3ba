"""The per-process generation loop of `distill.run`, generic over models (`distill.seam.Model`).

DataLoader workers take units (`distill.claims`), read their rows (`distill.units` / `distill.streams`), decode
images (`load_image`, EXIF applied), flag bad rows (`Task.bad_row_reason`) and call `teacher.prepare`; the main
process calls `teacher.infer` and writes each unit through its `distill.shards.UnitWriter`.

The main process claims its own share of units up front (`distill.claims`), generates them, then claims and
generates the other pending units that nobody holds (a task that never started, or died); DataLoader worker w of W
reads `units[w::W]`, one unit at a time, so W units are open at once. Each
batch is a slice of one unit (batch k = unit rows [k*B, (k+1)*B), bad rows dropped), so a row's batch, hence its
padding and result, does not depend on the number of processes or on where a crashed run resumed: flushes happen
on batch boundaries and a resume continues at one.

Flushes: a unit is flushed every `flush_every` rows (rounded up to whole batches) or `flush_interval_s` seconds,
whichever comes first. SIGTERM or Ctrl-C makes the loop flush every open unit at the current batch boundary,
release their claims and raise `Interrupted`.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable

from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from distill import shards as sh
from distill.card import publishable_path
from distill.claims import Claims
from distill.config import DistillConfig
from distill.errors import Interrupted
from distill.schema import output_row
from distill.seam import Model, load_row_image
from distill.signals import StopSignals
from distill.store import Store
from distill.units import Unit
from distill.workers import DieWithParent, usable_cores


@dataclass
class UnitJob:
    """What one process needs to generate its units."""

    config: DistillConfig
    """The run's configuration (batch size, flush bounds, workers...)."""
    task: Any
    """The `distill.tasks.Task`."""
    source: Any
    """A `distill.units.RowsSource` or a `distill.streams.StreamSource`."""
    plan: list[Unit]
    """Every unit of the run."""
    features: Any
    """The output rows' `datasets.Features` (`distill.schema.output_features`, with the provenance)."""
    schema: Callable[[Unit], Any]
    """The parquet schema of a unit's shard (features + its provenance metadata)."""
    teacher: Model
    """The teacher (weights not loaded yet: `generate_units` loads them when there is work)."""
    settings: dict
    """The teacher's decoding settings (`distill.generation.generation_settings`)."""
    store: Store
    """The output folder."""
    claims: Claims
    """This process's claims."""
    show_progress: bool
    """Show a tqdm bar (the main process of a run)."""
    roots: list[str]
    """Folders a row's `image_path` is published relative to (`distill.card.publishable_path`)."""


# ---------------------------------------------------------------------------------------------------- workers
class _Collate:
    """Runs in the DataLoader workers: decode images, flag bad rows, build prompts, `teacher.prepare` the rest."""

    def __init__(self, task, teacher: Model, images: bool, roots: list[str] | tuple = ()):
        self.task, self.teacher, self.images, self.roots = task, teacher, images, roots

    def __call__(self, items: list[tuple[int, dict]]) -> dict:
        good, bad, pils = [], [], []
        for index, row in items:
            pil, reason = load_row_image(row, self.task)
            if reason is not None:
                bad.append((index, row["id"], reason))
                continue
            image, path = row["image"] or {}, (row["image"] or {}).get("path")
            data = image.get("bytes")
            if self.images and data is None:  # store the file's bytes: the output is self-contained
                with open(path, "rb") as fh:
                    data = fh.read()
            # What is published holds no local path: the image keeps its file name (as `datasets` embeds it),
            # `image_path` is relative to the source folder
            image = {"bytes": data, "path": os.path.basename(path) if path else None}
            good.append((index, dict(row, image=image, image_path=publishable_path(path, self.roots),
                                     prompt=self.task.prompt(row))))
            pils.append(pil)
        batch: dict[str, Any] = {"indices": [i for i, _ in items], "good": good, "bad": bad}
        if good:
            batch["inputs"] = self.teacher.prepare([r for _, r in good], pils, self.task)
        return batch


class _Units(IterableDataset):
    """Messages for the main process: `{"unit", "open": Chain}`, then its batches, then `{"unit", "end": True}`.
    Worker w of W reads `units[w::W]`, each from the end of its chain; workers never touch the output (the main
    process claims, resumes and writes: an object store's client is not shared across a fork)."""

    def __init__(self, job: UnitJob, units: list[int], chains: dict[int, sh.Chain]):
        self.source, self.plan, self.units, self.chains = job.source, job.plan, units, chains
        self.batch_size = job.config.batch_size
        self.collate = _Collate(job.task, job.teacher, job.config.images, job.roots)

    def __iter__(self):
        info = get_worker_info()
        w, n = (info.id, info.num_workers) if info is not None else (0, 1)
        for index in self.units[w::n]:
            chain = self.chains[index]
            yield {"unit": index, "open": chain}
            if not chain.last:
                for items in self.source.rows(self.plan[index], chain.end, self.batch_size):
                    batch = self.collate(items)
                    batch["unit"] = index
                    yield batch
            yield {"unit": index, "end": True}


# ---------------------------------------------------------------------------------------------------- main process
class _Writers:
    """The open units of this process: their writers, flush policy, claim renewals and completion."""

    def __init__(self, job: UnitJob):
        self.job, self.open = job, {}
        bs = job.config.batch_size
        self.flush_rows = max(bs, -(-job.config.flush_every // bs) * bs)
        self.interval = job.config.flush_interval_s
        self.completed = self.written = 0
        self.held: set[int] = set()
        """Units this process claimed and has not finished (their claims are renewed together)."""
        self.renewed = time.monotonic()

    def start(self, index: int, chain: sh.Chain) -> None:
        unit = self.job.plan[index]
        shard = sh.shard_file(self.job.config.split, index, len(self.job.plan))
        self.open[index] = sh.UnitWriter(self.job.store, unit, self.job.schema(unit), shard, chain,
                                         {"file": self.job.source.public_file(unit)})

    def flush_due(self) -> None:
        """Flush every open unit that consumed `flush_rows` rows, or any row `interval` seconds ago or more."""
        now = time.monotonic()
        for w in self.open.values():
            if w.consumed >= self.flush_rows or (w.consumed and now - w.last_flush >= self.interval):
                w.flush()
        if now - self.renewed >= self.job.claims.lease_s / 4:  # a live owner's claims never lapse
            for index in self.held:
                self.job.claims.renew(index)
            self.renewed = now

    def finish(self, index: int) -> None:
        w = self.open.pop(index)
        w.complete()
        self.job.claims.release(index)
        self.held.discard(index)
        self.completed += 1
        self.written += w.written

    def close(self) -> None:
        """Flush what every open unit consumed and release its claim (an interruption)."""
        for w in self.open.values():
            w.flush()
            self.written += w.written
        self.open.clear()
        for index in self.held:
            self.job.claims.release(index)
        self.held.clear()


def worker_count(requested: int | None) -> int:
    """DataLoader workers for `num_workers` (`DistillConfig.num_workers`: None = 2, capped by the usable cores - 1)."""
    if requested is not None:
        return requested
    return max(0, min(2, usable_cores() - 1))


def _as_is(message: dict) -> dict:
    """The DataLoader's `collate_fn`: a message is already made (the default walks it to convert arrays)."""
    return message


def _loader(job: UnitJob, units: list[int], chains: dict[int, sh.Chain]) -> DataLoader:
    workers = min(worker_count(job.config.num_workers), len(units))
    return DataLoader(
        _Units(job, units, chains), batch_size=None, num_workers=workers, collate_fn=_as_is,
        persistent_workers=False, prefetch_factor=4 if workers else None,
        worker_init_fn=DieWithParent(),  # a killed run leaves no orphan workers behind
    )


def generate_units(job: UnitJob, own: list[int], steal: list[int]) -> tuple[int, float]:
    """Generate the units this process gets: its own share, claimed up front, then the others' pending units that
    nobody holds any more (claimed when its share is done). Returns (rows written this run, seconds from the first
    row read to the last shard written: the steady state, without start-up and model load); raises `Interrupted`
    after flushing on SIGTERM / Ctrl-C."""
    def done(index: int) -> bool:
        return job.store.exists(f"{sh.DONE}/{sh.unit_name(index)}.json")

    writers = _Writers(job)
    bar = tqdm(unit="row", desc=f"distill {job.task.name}", dynamic_ncols=True, smoothing=0.1,
               disable=not job.show_progress)
    loaded, first = False, None
    with StopSignals() as signals:
        try:
            for candidates in (own, steal):
                units = [u for u in candidates if job.claims.take(u, done)]
                writers.held.update(units)
                if not units or signals.received:
                    continue
                if not loaded:  # a process with nothing to do never loads the model
                    job.teacher.load()
                    loaded = True
                chains = {u: sh.find_chain(job.store, u) for u in units}
                for msg in _loader(job, units, chains):
                    first = first if first is not None else time.monotonic()
                    index = msg["unit"]
                    if "open" in msg:
                        writers.start(index, msg["open"])
                    elif "end" in msg:
                        writers.finish(index)
                    else:
                        _write_batch(job, writers.open[index], msg)
                        bar.update(len(msg["indices"]))
                    if signals.received:
                        break
                    writers.flush_due()
        finally:
            bar.close()
            if signals.received:
                writers.close()
        if signals.received:
            raise Interrupted(f"distill interrupted by {signals.received}: every open shard was flushed; run the "
                              "same command again to resume", signals.received)
    return writers.written, (time.monotonic() - first if first is not None else 0.0)


def _write_batch(job: UnitJob, w: sh.UnitWriter, batch: dict) -> None:
    first = w.unit.first_source_index()
    for index, row_id, reason in batch["bad"]:
        w.quarantine(row_id, index + first, reason)
    if batch["good"]:
        nbests = job.teacher.infer(batch["inputs"], job.task, job.settings)
        prompts = batch["inputs"].get("prompts") or [None] * len(nbests)  # a family's own prompts
        w.add([output_row(job.task, row, index + first, best, job.features, prompt)
               for (index, row), best, prompt in zip(batch["good"], nbests, prompts)])
    w.advance(len(batch["indices"]))
