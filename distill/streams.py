"""Streamed sources of `narvl-pipe distill` (`distill.sources.is_streamed` says which): read file by file, never
downloaded or materialised whole.

`open_stream(src, split, columns_map, task, ...)` accepts
- webdataset tar shards (what img2dataset writes: `00000.tar` holding `key.jpg`, `key.txt`, `key.json`): a `.tar`
  file, a folder of them, a glob or brace pattern (`shards/{00000..00127}.tar`), on any fsspec filesystem
  (`s3://bucket/shards/*.tar`, `hf://datasets/user/name/data/*.tar`); read with `datasets`' webdataset builder in
  streaming mode (`load_dataset("webdataset", data_files=[file], streaming=True)`), one file at a time;
- parquet files: a file, a folder (the `datasets` split naming rules pick the split's files), a glob; read with
  pyarrow + fsspec, one row group at a time, so that a unit may be a row range of a large file;
- a Hub dataset id (with `streaming`): its split's data files, as `datasets` resolves them (parquet or webdataset).

Columns become canonical as for map-style sources (`columns_map`, `{canonical: source}`), per row, in the DataLoader
workers: a webdataset's `__key__` is the `id`, its image member (`jpg`, `png`, `webp`...) the `image`, and the fields
of its `.json` member are columns too (so `--column captions=txt` or a json `captions` list both work); a row without
an `id` gets `"<file name>-<row in file>"`. Images stay encoded until the worker decodes them.
"""
from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import braceexpand
import datasets
import fsspec
from fsspec.implementations.local import LocalFileSystem
import pyarrow.parquet as pq
from datasets import Features, Image, Value
from datasets.data_files import DataFilesDict, get_data_patterns

from distill.errors import UserError
from distill.images import resolve_image_path
from distill.sources import split_parts
from distill.tasks import TASKS, canonical_columns
from distill.units import Unit

FORMATS = {".tar": "webdataset", ".parquet": "parquet"}
IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")
"""Webdataset members taken as the image, first found first."""
WDS_ID = "__key__"


def _expand(src: str) -> list[str]:
    """The files a path, URL, glob or brace pattern names (each pattern's matches sorted, patterns in order)."""
    files: list[str] = []
    for pattern in braceexpand.braceexpand(src):
        fs, path = fsspec.core.url_to_fs(pattern)
        if any(ch in path for ch in "*?["):
            found = sorted(fs.glob(path))
        elif fs.isdir(path):
            found = sorted(fs.glob(posixpath.join(path, "*.tar"))) or sorted(
                fs.glob(posixpath.join(path, "**", "*.parquet")))
        else:
            found = [path] if fs.exists(path) else []
        files += [f if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(f) for f in found]
    return files


def _split_files(folder: str, files: list[str], split: str) -> list[str]:
    """The parquet files of `split` in a local folder, by the `datasets` naming rules (`train-*.parquet`,
    `train/...`; a folder without split names is all `train`)."""
    try:
        by_split = DataFilesDict.from_patterns(get_data_patterns(folder), base_path=folder)
    except FileNotFoundError:
        by_split = {}
    if split not in by_split:
        raise UserError(f"split '{split}' not found in {folder}; available: {', '.join(sorted(by_split)) or '(none)'}")
    chosen = {os.path.abspath(f) for f in by_split[split]}
    return [f for f in files if os.path.abspath(f) in chosen]


def _hub_files(src: str, split: str) -> tuple[list[str], str]:
    """A Hub dataset id's split as (data file URLs, builder name), as `datasets` resolves them."""
    try:
        builder = datasets.load_dataset_builder(src)
    except Exception as exc:  # noqa: BLE001 (offline, unknown id: one line)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot open data source '{src}': not a local path, and resolving it on the Hub "
                        f"failed ({first})") from exc
    data_files = builder.config.data_files or {}
    if split not in data_files:
        raise UserError(f"split '{split}' not found in {src}; available: {', '.join(sorted(data_files)) or '(none)'}")
    return [str(f) for f in data_files[split]], builder.name


def list_files(src: str, split: str, streaming: bool) -> tuple[list[str], str]:
    """(files, format) of a streamed source."""
    path = os.path.expanduser(src)
    local_like = "://" in src or os.path.exists(path) or any(ch in src for ch in "*?[{")
    if not local_like:  # a Hub id
        files, builder = _hub_files(src, split)
        fmt = {"parquet": "parquet", "webdataset": "webdataset"}.get(builder)
        if fmt is None:
            raise UserError(f"{src}: streaming reads parquet and webdataset Hub datasets, this one is {builder}")
        return files, fmt
    files = _expand(path if "://" not in src else src)
    if not files:
        raise UserError(f"{src} matches no file")
    suffixes = {os.path.splitext(f)[1] for f in files}
    if len(suffixes) != 1 or next(iter(suffixes)) not in FORMATS:
        raise UserError(f"{src}: a streamed source is webdataset .tar or .parquet files, found "
                        f"{', '.join(sorted(s or '(no suffix)' for s in suffixes))}")
    fmt = FORMATS[next(iter(suffixes))]
    if fmt == "parquet" and os.path.isdir(path):
        files = _split_files(path, files, split)
    return files, fmt


# ---------------------------------------------------------------------------------------------------- rows
def _canonical_features() -> dict[str, Any]:
    """Every registered task's canonical column types (what a streamed row is normalised to)."""
    feats: dict[str, Any] = {"id": Value("string"), "image": Image(decode=False)}
    for cls in TASKS.values():
        feats.update({k: v for k, v in cls().column_features().items() if k not in feats})
    return feats


def _as_list(value: Any) -> list | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


def _box(value: Any) -> list[float] | None:
    if isinstance(value, str):
        try:
            return [float(x) for x in value.replace(" ", ",").split(",") if x]
        except ValueError:
            return None
    return None if value is None else [float(x) for x in value]


_NORMALISE = {
    "captions": _as_list, "answers": _as_list, "box": _box,
    "object_tags": lambda v: [t for t in v.split("&&") if t.strip()] if isinstance(v, str) else v,
}


@dataclass
class StreamSource:
    """A streamed source: its files, format and the column selection, checked on its first row."""

    src: str
    split: str
    format: str
    files: list[str]
    select: dict[str, str]
    """canonical column -> source column (resolved from `columns_map` and the first row)."""
    image_root: str | None
    features: Features
    """The canonical features of the columns this source holds."""
    storage_options: dict[str, Any] = field(default_factory=dict)
    kind: str = "stream"

    def plan(self, shard_size: int) -> list[Unit]:
        """One unit per tar; parquet files in row ranges of `shard_size` (their footers give the counts)."""
        units: list[Unit] = []
        for f in self.files:
            if self.format == "webdataset":
                units.append(Unit(len(units), f, 0, None))
                continue
            with fsspec.open(f, "rb", **self.storage_options) as fh:
                n = pq.ParquetFile(fh).metadata.num_rows
            units += [Unit(len(units) + k, f, lo, min(lo + shard_size, n))
                      for k, lo in enumerate(range(0, n, shard_size))]
        return units

    def public_file(self, unit: Unit) -> str | None:
        """The unit's file as published: a URL as it is, a local file relative to the source's folder."""
        f = unit.file or ""
        if "://" in f or not os.path.isabs(f):
            return f
        root = self.src if os.path.isdir(self.src) else os.path.dirname(self.src.split("*")[0].split("{")[0])
        rel = os.path.relpath(f, root)
        return rel if not rel.startswith("..") else os.path.basename(f)

    def raw_rows(self, unit: Unit, start: int = 0) -> Iterator[dict]:
        """The unit's source rows from unit row `start` on, as the format gives them (images not decoded)."""
        if self.format == "webdataset":
            yield from _webdataset_rows(unit.file, start, self.storage_options)
            return
        yield from _parquet_rows(unit.file, unit.lo + start, unit.hi, self.storage_options,
                                 sorted(set(self.select.values())) or None)

    def canonical(self, raw: dict, unit: Unit, index: int) -> dict:
        """One source row in canonical columns (`index`: its row in the unit)."""
        row = {c: raw.get(s) for c, s in self.select.items()}
        if row.get("id") is None:
            row["id"] = f"{posixpath.basename(unit.file or '')}-{unit.lo + index}"
        row["id"] = str(row["id"])
        for col, fn in _NORMALISE.items():
            if col in row:
                row[col] = fn(row[col])
        row["image"] = self._image(row.get("image"), unit)
        return row

    def _image(self, value: Any, unit: Unit) -> dict:
        root = self.image_root or (os.path.dirname(unit.file) if unit.file and "://" not in unit.file else "")
        if isinstance(value, dict):
            path = value.get("path")
            if value.get("bytes") is None:
                path = resolve_image_path(path, root)
            return {"bytes": value.get("bytes"), "path": path}
        if isinstance(value, (bytes, bytearray)):
            return {"bytes": bytes(value), "path": None}
        return {"bytes": None, "path": resolve_image_path(value, root) if isinstance(value, str) else None}

    def rows(self, unit: Unit, start: int, batch_size: int) -> Iterator[list[tuple[int, dict]]]:
        """Batches of `(row index in the unit, canonical row)` from unit row `start` on (runs in a worker)."""
        batch: list[tuple[int, dict]] = []
        for k, raw in enumerate(self.raw_rows(unit, start), start):
            batch.append((k, self.canonical(raw, unit, k)))
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def key(self) -> dict[str, Any]:
        """The source's part of the run identity."""
        return {"data": self.src, "split": self.split, "format": self.format, "files": self.files,
                "columns": self.select}


def _webdataset_rows(file: str, start: int, storage_options: Mapping[str, Any]) -> Iterator[dict]:
    ds = datasets.load_dataset("webdataset", data_files={"train": [file]}, split="train", streaming=True,
                               storage_options=dict(storage_options) or None)
    images = [c for c, f in (ds.features or {}).items() if isinstance(f, Image)]
    for col in images:
        ds = ds.cast_column(col, Image(decode=False))  # decoded by the worker's `load_image`
    if start:
        ds = ds.skip(start)
    # `iter()`, not `for row in ds`: in a DataLoader worker, iterating the dataset itself splits its files across the
    # workers, and this one-file unit would come out empty in every worker but the first (the unit is already this
    # worker's own: `teacher_loop._Units` deals units to workers)
    for batch in ds.iter(batch_size=64):
        for i in range(len(next(iter(batch.values())))):
            yield _merge_json({k: v[i] for k, v in batch.items()})


def _merge_json(row: dict) -> dict:
    """A webdataset row with its `.json` member's fields as columns too (never over a member's)."""
    meta = row.get("json")
    return {**{k: v for k, v in meta.items() if k not in row}, **row} if isinstance(meta, dict) else row


def _parquet_rows(file: str, lo: int, hi: int | None, storage_options: Mapping[str, Any],
                  columns: list[str] | None) -> Iterator[dict]:
    with fsspec.open(file, "rb", **storage_options) as fh:
        pf = pq.ParquetFile(fh)
        hi = pf.metadata.num_rows if hi is None else hi
        first = 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if first + n > lo and first < hi:
                table = pf.read_row_group(g, columns=None if columns is None else
                                          [c for c in columns if c in pf.schema_arrow.names])
                a, b = max(lo - first, 0), min(hi - first, n)
                yield from table.slice(a, b - a).to_pylist()
            first += n
            if first >= hi:
                break


def _first_row(files: list[str], fmt: str, storage_options: Mapping[str, Any]) -> dict:
    probe = StreamSource("", "", fmt, files, {}, None, Features(), dict(storage_options))
    for f in files:
        for raw in probe.raw_rows(Unit(0, f, 0, None)):
            return raw
    raise UserError(f"{files[0]}: no rows in any of the {len(files)} file(s)")


def _resolve_columns(first: dict, fmt: str, columns_map: Mapping[str, str], task) -> dict[str, str]:
    """canonical -> source column for the columns this source has, checked like a map-style source's."""
    columns = canonical_columns()
    names = list(first)
    for canonical, source in columns_map.items():
        if canonical not in columns:
            raise UserError(f"`columns` {canonical}={source}: '{canonical}' is not a canonical column; "
                            f"choose from {', '.join(columns)}")
        if source not in first:
            raise UserError(f"`columns` {canonical}={source}: column '{source}' not found; columns: {', '.join(names)}")
    select = {c: c for c in columns if c in first and c not in columns_map.values()}
    if fmt == "webdataset":
        select.setdefault("id", WDS_ID)
        image = next((m for m in IMAGE_MEMBERS if m in first), None)
        if image is not None:
            select.setdefault("image", image)
    select.update(columns_map)
    for col in task.required_columns():
        if col not in select:
            raise UserError(f"column '{col}' missing for task {task.name}; columns: {', '.join(names)}")
    return {c: select[c] for c in columns if c in select}


def open_stream(src: str, split: str, columns_map: Mapping[str, str] | None, task, image_root: str | None = None,
                limit: int | None = None, streaming: bool = False,
                storage_options: Mapping[str, Any] | None = None) -> StreamSource:
    """`src` as a `StreamSource`, validated for `task` on its first row (before any model loads)."""
    if limit is not None:
        raise UserError("`limit` applies to map-style sources; for a streamed source name fewer files "
                        "(a narrower glob or brace range)")
    if len(split_parts(split)) > 1:
        raise UserError(f"split union '{split}': a streamed source reads one split")
    files, fmt = list_files(str(src), split, streaming)
    first = _first_row(files, fmt, storage_options or {})
    select = _resolve_columns(first, fmt, dict(columns_map or {}), task)
    canonical = _canonical_features()
    features = Features({c: canonical[c] for c in select if c in canonical})
    for col in task.prompt_columns():  # an optional text input the source lacks is "" (entailment's premise)
        if col not in features:
            features[col] = Value("string")
    return StreamSource(str(src), split, fmt, files, select, image_root, features, dict(storage_options or {}))
