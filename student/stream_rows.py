"""`train-student --streaming`: training rows read from a stream (a distill output folder, a parquet URL or glob, a
Hub dataset id) instead of a map-style dataset, with an exact resume.

- the source is a `datasets.IterableDataset` (`load_dataset(..., streaming=True)`), split by rank with
  `datasets.distributed.split_dataset_by_node` (whole files per rank when their number divides by the world size,
  else every world-th row);
- rows are shuffled through a buffer of `shuffle_buffer` rows, seeded per rank; the stream restarts for each epoch;
- the data position is part of each checkpoint: a `torchdata.stateful_dataloader.StatefulDataLoader` asks
  `StreamRows.state_dict()` (in its workers, if any) for the `IterableDataset.state_dict()` of the stream, the rows
  in the shuffle buffer (`datasets` refills its own buffer on resume, which would change the order) and the RNG, so
  a resumed run at the same world size sees the same batches, hence ends with bitwise-equal weights;
- each row is encoded by `student.data.TaskRows` (KD targets, re-encoded when needed); an unusable row is skipped
  (recorded in `skipped.jsonl`) and the next one takes its place.
"""
from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any, Callable, Iterator

import datasets
import torch
from datasets.distributed import split_dataset_by_node
from torch.utils.data import IterableDataset, get_worker_info
from torchdata.stateful_dataloader import StatefulDataLoader

from distill.errors import UserError
from student.data import TaskRows


def open_stream(src: str, split: str, rank: int, world_size: int):
    """`src` as this rank's `datasets.IterableDataset` (a local distill output: its parquet shards)."""
    path = Path(src)
    try:
        if (path / "data").is_dir() and (path / "manifest.json").is_file():
            files = sorted(str(p) for p in (path / "data").glob("*.parquet"))
            ds = datasets.load_dataset("parquet", data_files={"train": files}, split="train", streaming=True)
        else:
            ds = datasets.load_dataset(src, split=split, streaming=True)
    except ValueError as exc:  # an unknown split
        raise UserError(f"{src}: {str(exc).splitlines()[0]}") from exc
    return split_dataset_by_node(ds, rank=rank, world_size=world_size)


class StreamRows(IterableDataset):
    """Encoded training examples from a rank's stream, endless (epoch after epoch), shuffled through a buffer."""

    streaming = True

    def __init__(self, stream, rows: TaskRows, seed: int, shuffle_buffer: int, num_rows: int | None, rank: int):
        self.stream, self.rows, self.seed, self.shuffle_buffer = stream, rows, seed, max(1, shuffle_buffer)
        self.num_rows = num_rows
        """Rows of the whole set when known (the card's `dataset_info`), for `epochs`; None otherwise."""
        self.rank = rank
        self._state: dict[str, Any] = {"epoch": 0, "source": None, "buffer": [], "rng": None, "draws": 0}

    # StatefulDataLoader calls these (in the worker that iterates, when there are workers)
    def state_dict(self) -> dict[str, Any]:
        state = dict(self._state)
        state["source"] = self.stream.state_dict() if state.get("live") else state["source"]
        state.pop("live", None)
        return copy.deepcopy(state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state = copy.deepcopy(state)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        if info is not None and info.num_workers > 1:
            raise UserError("`num_workers` > 1 with `streaming`: use 0 or 1 (the stream is read in order)")
        st = self._state
        rng = random.Random()
        if st["rng"] is not None:
            rng.setstate(st["rng"])
        else:
            rng.seed(self.seed * 1_000_003 + self.rank)
        while True:
            self.stream.set_epoch(st["epoch"])
            if st["source"] is not None:
                self.stream.load_state_dict(st["source"])
            st["live"] = True
            buffer: list[dict] = st["buffer"]
            for row in self.stream:
                buffer.append(row)
                if len(buffer) >= self.shuffle_buffer:
                    yield from self._emit(buffer, rng)
            while buffer:  # the end of the epoch: the buffer drains
                yield from self._emit(buffer, rng)
            st.update(epoch=st["epoch"] + 1, source=None, live=False)

    def _emit(self, buffer: list[dict], rng: random.Random) -> Iterator[dict[str, Any]]:
        """Take one random row out of the buffer; yield its example (nothing for an unusable row)."""
        st = self._state
        row = buffer.pop(rng.randrange(len(buffer)))
        draw = st["draws"]
        st["draws"] += 1
        st["rng"] = rng.getstate()
        example = self.rows.encode_row(row, draw)
        if example is not None:
            yield example

    def loader(self, batch_size: int, collate_fn: Callable | None, num_workers: int, worker_init_fn: Callable):
        """The `StatefulDataLoader` of this stream (its `state_dict()` is the data position of a checkpoint)."""
        # its own generator: creating the iterator would otherwise draw from the global RNG, and shift the dropout
        # masks of a resumed run (whose iterator is created after the RNG states are restored)
        return StatefulDataLoader(self, batch_size=batch_size, collate_fn=collate_fn, num_workers=num_workers,
                                  worker_init_fn=worker_init_fn if num_workers else None,
                                  generator=torch.Generator().manual_seed(self.seed))
