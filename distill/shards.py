"""The output of `narvl-pipe distill`: one parquet shard per unit of work (`distill.units`), written crash-safely on
any fsspec filesystem (`distill.store`). The finished folder is what the Hub holds:

    OUT/data/<split>-00012-of-00040.parquet   unit 12's rows; images embedded as `datasets` embeds them; the
                                              parquet schema metadata holds the `datasets` features and, under
                                              `narvl_pipe`, the provenance (teacher, tokenizer hash, generation
                                              settings, task) and the input unit (file, row range)
    OUT/manifest.json                         run identity, unit plan, counts (`distill.manifest`)
    OUT/README.md                             the dataset card (`distill.card`), written when the last unit is done
    OUT/quarantine.jsonl                      every skipped source row: {"id", "index", "reason"[, "file"]}

`datasets.load_dataset(OUT)` and the Hub read it as it is. While units are in progress (hidden from `datasets`,
which skips dot-folders):

    OUT/.work/parts/00012/0000000000-0000000256.parquet   a flush of unit 12: its source rows [0, 256) (written rows
                                                          + the quarantined ones in its metadata)
    OUT/.work/parts/00012/0000000256-0000000300-last.parquet   a part that ended the unit (written by earlier
                                                          versions; still read on resume)
    OUT/.work/claims/00012.json               who works on unit 12, until when (`distill.claims`)
    OUT/.work/done/00012.json                 unit 12's completion marker: counts, quarantine, statistics

Rules that make every source row appear exactly once (or once in the quarantine), whatever crashes:
- every file is written atomically (`Store.open_write`): a part, a shard or a marker is whole or absent;
- a part covers a contiguous range of the unit's source rows, each of them written or quarantined exactly once in it;
  a resume takes the chain of parts from row 0 (at each position the part reaching furthest) and continues at its
  end, so a kill -9 loses at most the rows since the unit's last flush;
- a unit's shard has one fixed name and is built from one chain of parts from row 0 followed by the rows its writer
  buffered since its last flush, up to the unit's end (written straight into the shard, not as a part first: a
  crash before the marker loses them as it loses any unflushed rows), so it holds each row of the unit once;
  writing it twice (two writers of one unit, a crash before the marker) writes the same rows twice over the same
  name;
- order: shard, then marker, then the parts are deleted; a unit with a marker is never redone.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distill.card import STAT_COLUMNS
from distill.store import Store
from distill.units import Unit

DATA_DIR = "data"
MANIFEST = "manifest.json"
QUARANTINE = "quarantine.jsonl"
CARD = "README.md"
WORK = ".work"
PARTS = f"{WORK}/parts"
CLAIMS = f"{WORK}/claims"
DONE = f"{WORK}/done"
PART_META = b"narvl_pipe_part"
SHARD_META = b"narvl_pipe"
STAT_SAMPLE = 1000
"""Values per unit kept for the card's percentiles (all of them for units of up to this many rows)."""
_PART = re.compile(r"^(\d{10})-(\d{10})(-last)?\.parquet$")


def split_name(split: str) -> str:
    """The split name of the output files (`train+restval` -> `train_restval`: `datasets` split names are words)."""
    return re.sub(r"\W", "_", split)


def shard_file(split: str, index: int, num_units: int) -> str:
    return f"{DATA_DIR}/{split_name(split)}-{index:05d}-of-{num_units:05d}.parquet"


def unit_name(index: int) -> str:
    return f"{index:05d}"


def done_units(store: Store) -> set[int]:
    """Units with a completion marker."""
    return {int(n[:-5]) for n in store.list(DONE) if n.endswith(".json") and n[:-5].isdigit()}


def read_marker(store: Store, index: int) -> dict | None:
    return store.read_json_or_none(f"{DONE}/{unit_name(index)}.json")


@dataclass
class Chain:
    """The parts a resumed unit continues from: names in row order, the next source row, and whether the last part
    ended the unit."""

    parts: list[str] = field(default_factory=list)
    end: int = 0
    last: bool = False


def find_chain(store: Store, index: int) -> Chain:
    """The longest chain of parts from row 0 (at each position the part that reaches furthest)."""
    spans: dict[int, list[tuple[int, bool, str]]] = {}
    for name in store.list(f"{PARTS}/{unit_name(index)}"):
        m = _PART.match(name)
        if m:
            spans.setdefault(int(m[1]), []).append((int(m[2]), bool(m[3]), name))
    chain = Chain()
    while chain.end in spans and not chain.last:
        hi, last, name = max(spans[chain.end])
        if hi <= chain.end and not last:
            break
        chain.parts.append(name)
        chain.end, chain.last = hi, last
    return chain


class UnitWriter:
    """Writes one unit: `add(rows)` / `quarantine(...)` / `advance(n)` per batch, `flush()` (a part), then
    `complete()` (the shard from the parts and the rows since, then the marker). Rows are dicts in the Arrow storage
    form of `schema` (an image is `{"bytes", "path"}`)."""

    def __init__(self, store: Store, unit: Unit, schema: pa.Schema, shard: str, chain: Chain,
                 extra_marker: dict | None = None):
        self.store, self.unit, self.schema, self.shard = store, unit, schema, shard
        self.folder = f"{PARTS}/{unit_name(unit.index)}"
        self.parts, self.last = list(chain.parts), chain.last
        self.pos = chain.end
        """Unit source rows flushed (written or quarantined in a part)."""
        self.consumed = 0
        """Unit source rows consumed since the last flush (they are in the buffers)."""
        self.extra_marker = extra_marker or {}
        self._rows: list[dict] = []
        self._bad: list[dict] = []
        self.opened = self.last_flush = time.monotonic()
        self.written = 0
        """Rows flushed by this writer (this run)."""

    def add(self, rows: list[dict]) -> None:
        self._rows.extend(rows)

    def quarantine(self, row_id: str, index: int, reason: str) -> None:
        rec = {"id": row_id, "index": int(index), "reason": reason}
        if self.unit.file is not None:
            rec["file"] = self.extra_marker.get("file")
        self._bad.append(rec)

    def advance(self, rows: int) -> None:
        """`rows` more source rows of the unit were handled (added or quarantined)."""
        self.consumed += rows

    def _take(self) -> pa.Table:
        """The consumed source rows [pos, pos + consumed) as a part's table (the buffers emptied)."""
        upto = self.pos + self.consumed
        meta = dict(self.schema.metadata or {})
        meta[PART_META] = json.dumps({"rows": [self.pos, upto], "quarantine": self._bad}).encode()
        table = pa.Table.from_pylist(self._rows, schema=self.schema.with_metadata(meta))
        self.written += len(self._rows)
        self.pos, self.consumed, self._rows, self._bad = upto, 0, [], []
        return table

    def flush(self) -> None:
        """Write the consumed source rows [pos, pos + consumed) as one part (nothing to write when none)."""
        if not self.consumed:
            return
        name = f"{self.pos:010d}-{self.pos + self.consumed:010d}.parquet"
        table = self._take()
        with self.store.open_write(f"{self.folder}/{name}") as fh:
            pq.write_table(table, fh)
        self.parts.append(name)
        self.last_flush = time.monotonic()

    def complete(self) -> dict:
        """Write the unit's shard from its parts and the rows consumed since the last flush (straight into the shard:
        writing them as a part to read it back at once cost a third of the unit's writing), then its marker; returns
        the marker."""
        tail = None if self.last else self._take()
        extra = {**self.extra_marker, "seconds": round(time.monotonic() - self.opened, 3)}
        return compact(self.store, self.unit, self.schema, self.shard, self.parts, extra, tail)


def _part_meta(table: pa.Table) -> dict:
    return json.loads((table.schema.metadata or {})[PART_META])


def compact(store: Store, unit: Unit, schema: pa.Schema, shard: str, parts: list[str], extra: dict,
            tail: pa.Table | None = None) -> dict:
    """Copy a chain of parts, then `tail` (a part's table not written as a part: the rows up to the unit's end),
    into the unit's shard (part by part: memory bounded by one flush), then write the marker and delete the parts.
    A part gone missing means another writer finished the unit first."""
    folder = f"{PARTS}/{unit_name(unit.index)}"
    bad: list[dict] = []
    values: dict[str, list[np.ndarray]] = {c: [] for c in STAT_COLUMNS if c in schema.names}
    rows = end = 0

    def tables():
        for name in parts:
            with store.open_read(f"{folder}/{name}") as src:
                yield pq.read_table(src)
        if tail is not None:
            yield tail

    try:
        with store.open_write(shard) as fh:
            writer = pq.ParquetWriter(fh, schema)
            for table in tables():
                meta = _part_meta(table)
                bad += meta["quarantine"]
                end = meta["rows"][1]
                table = table.replace_schema_metadata(schema.metadata)
                if table.num_rows:
                    writer.write_table(table, row_group_size=table.num_rows)
                rows += table.num_rows
                for col in values:
                    values[col].append(table.column(col).to_numpy(zero_copy_only=False).astype(np.float64))
            writer.close()
            size = fh.tell()
    except FileNotFoundError:
        marker = read_marker(store, unit.index)
        if marker is None:
            raise
        return marker
    marker = {"unit": unit.record(extra.get("file")), "shard": shard, "rows": rows,
              "source_rows": end, "quarantine": bad,
              "bytes": size, "seconds": extra.get("seconds", 0.0),
              "stats": {c: unit_stats(np.concatenate(v) if v else np.zeros(0)) for c, v in values.items()}}
    store.write_json(f"{DONE}/{unit_name(unit.index)}.json", marker)
    store.remove_tree(folder)
    return marker


def unit_stats(values: np.ndarray) -> dict[str, Any]:
    """Count, sum, sum of squares, min, max and an evenly spaced sample of the sorted values (for percentiles)."""
    if not len(values):
        return {"n": 0}
    ordered = np.sort(values)
    pick = np.linspace(0, len(ordered) - 1, min(len(ordered), STAT_SAMPLE)).round().astype(int)
    return {"n": int(len(values)), "sum": float(values.sum()), "sumsq": float((values ** 2).sum()),
            "min": float(ordered[0]), "max": float(ordered[-1]), "sample": ordered[pick].tolist()}


def merged_stats(stats: list[dict], percentiles: tuple[int, ...]) -> dict[str, float] | None:
    """Mean, std, min, max and weighted percentiles over units' `unit_stats` (exact while a unit holds at most
    `STAT_SAMPLE` rows)."""
    stats = [s for s in stats if s.get("n")]
    if not stats:
        return None
    n = sum(s["n"] for s in stats)
    mean = sum(s["sum"] for s in stats) / n
    var = max(sum(s["sumsq"] for s in stats) / n - mean ** 2, 0.0)
    values = np.concatenate([np.asarray(s["sample"]) for s in stats])
    weights = np.concatenate([np.full(len(s["sample"]), s["n"] / len(s["sample"])) for s in stats])
    order = np.argsort(values, kind="stable")
    values, cum = values[order], np.cumsum(weights[order])
    out = {"mean": mean, "std": var ** 0.5, "min": min(s["min"] for s in stats), "max": max(s["max"] for s in stats)}
    ranks = cum - weights / 2 - 0.5  # each value's (0-based) rank among all n; 0..n-1 when every value is kept
    for p in percentiles:  # numpy's default (linear) rule
        out[f"p{p}"] = float(np.interp(p / 100 * (n - 1), ranks, values))
    return out
