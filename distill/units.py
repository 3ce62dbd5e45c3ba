"""Units of work of `narvl-pipe distill`: each unit is a fixed set of source rows that becomes one output shard.

- a map-style source (`distill.sources.open_source`, a `datasets.Dataset`): rows `[i*S, (i+1)*S)` (S =
  `shard_size`), as before;
- a streamed source (`distill.streams`): one input file (a webdataset tar), or a fixed row range `[k*S, (k+1)*S)`
  of a parquet file (its row count is in its footer).

A unit's rows are read in a DataLoader worker (`rows(unit, start)`, from row `start` of the unit on, for a resumed
unit) as `(row index in the unit, canonical row)`; the plan is a pure function of the source listing and `shard_size`,
so every process and every task computes the same plan, and it is recorded in the manifest.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator


@dataclass(frozen=True)
class Unit:
    """One unit of work: source rows [lo, hi) of `file` (or of the map-style source when `file` is None)."""

    index: int
    """Position in the plan: the output shard's number."""
    file: str | None
    """The input file (URL or path) of a streamed source; None for a map-style source."""
    lo: int
    """First row (in the file, or in the map-style source)."""
    hi: int | None
    """End row (exclusive); None: up to the end of the file (a webdataset tar, whose length is known only by reading)."""

    def record(self, public_file: str | None = None) -> dict[str, Any]:
        """What a shard says about its input (`public_file`: the file as published, without a local root)."""
        return {"index": self.index, "file": public_file if public_file is not None else self.file,
                "rows": [self.lo, self.hi]}

    def first_source_index(self) -> int:
        """The `source_index` of the unit's row 0: its row in the map-style source, or in its file."""
        return self.lo


def plan_rows(num_rows: int, shard_size: int) -> list[Unit]:
    """The units of a map-style source of `num_rows` rows."""
    return [Unit(i, None, lo, min(lo + shard_size, num_rows)) for i, lo in enumerate(range(0, num_rows, shard_size))]


class RowsSource:
    """A map-style canonical `datasets.Dataset` as units of `shard_size` rows (pickled into the workers: the
    dataset is memory-mapped, so this is cheap)."""

    kind = "rows"

    def __init__(self, ds):
        self.ds = ds
        self.features = ds.features

    def plan(self, shard_size: int) -> list[Unit]:
        return plan_rows(len(self.ds), shard_size)

    def rows(self, unit: Unit, start: int, batch_size: int) -> Iterator[list[tuple[int, dict]]]:
        """Batches of `(row index in the unit, canonical row)` from unit row `start` on."""
        for lo in range(unit.lo + start, unit.hi, batch_size):
            idx = list(range(lo, min(lo + batch_size, unit.hi)))
            yield list(zip((i - unit.lo for i in idx), self.ds.__getitems__(idx)))

    def public_file(self, unit: Unit) -> str | None:
        return None
