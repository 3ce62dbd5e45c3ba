"""Open a data source as a `datasets.Dataset` in the canonical row schema (docs/ARCHITECTURE.md), and validate it.

`open_source(src, split, columns_map, task)` accepts, in this order of detection:
- a `save_to_disk` folder: a `DatasetDict` (the split is chosen) or a `Dataset` (taken as the split asked for,
  unless it records another split name);
- a benchmark in its owner's files (`distill.owner_formats`: COCO-Karpathy `dataset_coco.json`, VQAv2 questions +
  annotations JSON, RefCOCO/+/g `refs(...).p` + `instances.json`, SNLI-VE `snli_ve_*.jsonl`, each with its image
  folder found beside it or under `image_root`): a file recognised by its content, or a folder holding them;
- OFA's TSV files (a `.tsv` file, or a folder of them named `<anything>_<split>.tsv`), one layout per task, as in
  OFA-Sys's `run_scripts` (`selected_cols` checked against their eval scripts):
  - caption: `uniq-id, image-id, caption, predicted object labels, image base64`; `caption` may join several
    references with `&&`;
  - vqa: `question-id, image-id, question, answers, predicted labels, image base64`; answers are
    `conf|!+answer&&conf|!+answer...` and become `answer_scores` (answer -> OFA's confidence, as OFA's `ref_dict`:
    a repeated answer keeps its last confidence) plus `answers` (each answer once, in file order); the predicted
    labels (`&&`-joined object tags) become `object_tags`;
  - grounding (RefCOCO): `uniq-id, image-id, text, region-coord "x0,y0,x1,y1", image base64`;
  - entailment (SNLI-VE): `uniq-id, image-id, image base64, hypothesis, caption (premise), label`;
- an imagefolder with metadata (`metadata.jsonl/.csv/.parquet` anywhere in the folder): `load_dataset("imagefolder")`;
- parquet/arrow files, or a folder of them: `load_dataset("parquet"|"arrow")`; a folder uses the `datasets` split
  naming rules (`train-*.parquet`, `validation/…`); a single file is taken as the split asked for;
- otherwise a Hub dataset id (`load_dataset(src)`, offline-aware).

Then `columns_map` (`{canonical: source}`) renames columns, the canonical columns are kept (others dropped), and
types are normalised: `id` -> str (a source without `id` gets `"<split>-<row index>"`), a list column of the task
(`Task.column_features`) given as one string -> the task's value for it (`Task.text_value`: a one-element list,
"x0,y0,x1,y1" -> floats, `&&`-joined object tags -> a list), `image` -> `datasets.Image(decode=False)` so that images
are decoded later (in DataLoader workers), then the task's own step (`Task.canonicalise`: a missing premise -> "").

Validation (split, mapped columns, the task's input columns) raises `UserError` with one line naming what exists,
and never needs the model.

A split may be a union, `train+restval` (Karpathy's usual 113k COCO training set): every part is opened and
canonicalised on its own (so generated ids stay distinct) and the parts are concatenated in order, for every kind of
source. This module knows no task by its columns: each task's columns, types and TSV layout come from its `Task`.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

import datasets
import pyarrow.parquet as pq
from datasets import Dataset, Features, Image, Value, concatenate_datasets

from distill.errors import UserError
from distill.images import decode_base64, resolve_image_path
from distill.owner_formats import OWNER_FILES, available as _available, file_stamp, open_owner_format
from distill.tasks import canonical_columns, get_task

_COMPUTED = {"CANONICAL_COLUMNS": canonical_columns}
"""Module attributes computed on access: CANONICAL_COLUMNS follows the registered tasks
(`distill.tasks.canonical_columns`)."""


def __getattr__(name: str):
    if name in _COMPUTED:
        return _COMPUTED[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")


def split_parts(split: str) -> list[str]:
    """`"train+restval"` -> `["train", "restval"]` (a single split gives itself); empty or repeated parts are errors."""
    parts = [p.strip() for p in str(split).split("+")]
    if not all(parts) or len(set(parts)) != len(parts):
        raise UserError(f"split '{split}': expected a split name or a union of distinct ones, e.g. train+restval")
    return parts


def pick_split(dd, split: str, src: str):
    """`dd[split]` of a `DatasetDict`, or the concatenation of a union's parts (`train+restval`), in order."""
    parts = split_parts(split)
    for part in parts:
        if part not in dd:
            raise UserError(f"split '{part}' not found in {src}; available: {_available(dd.keys())}")
    return dd[parts[0]] if len(parts) == 1 else _concatenate([dd[p] for p in parts], split, src)


def _concatenate(datasets_: list, split: str, src: str):
    try:
        return concatenate_datasets(datasets_)
    except ValueError as exc:  # different columns/types per split
        raise UserError(f"split union '{split}' of {src}: the splits do not share one schema ({exc})") from exc


_pick_split = pick_split  # the loaders below use the private name


# ---------------------------------------------------------------------------------------------------- raw loaders
def load_saved(path: str | os.PathLike, split: str | None, src: str | None = None):
    """A `save_to_disk` folder as one `Dataset`: the `split` of a `DatasetDict` (only that split is opened), or the
    `Dataset` itself (whatever `split` says). A dataset of 0 rows (which `datasets` cannot open) raises `UserError`."""
    path, src = Path(path), src or os.fspath(path)
    parts = split_parts(split) if split else []
    if len(parts) > 1 and (path / "dataset_dict.json").is_file():  # a union: its parts in order
        return _concatenate([load_saved(path, p, src) for p in parts], split, src)
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
        if split not in splits:
            raise UserError(f"split '{split}' not found in {src}; available: {_available(splits)}")
        path, where = path / split, f"split '{split}' of {src}"
    else:
        where = src
    try:
        return datasets.load_from_disk(str(path))
    except IndexError as exc:  # 0 rows: save_to_disk wrote no data file, and datasets cannot concatenate none
        raise UserError(f"{where} has no rows (an empty save_to_disk dataset): point it at a dataset with "
                        "examples") from exc


def _check_metadata_rows(folder: Path, src: str) -> None:
    """`imagefolder` fails with an IndexError when every metadata file is empty: say so instead."""
    files = [p for p in folder.rglob("metadata.*") if p.name in _METADATA_FILES]
    if files and all(_metadata_rows(p) == 0 for p in files):
        raise UserError(f"{src}: {', '.join(sorted(p.name for p in files))} lists no images (0 rows): add one "
                        'record per image with its file_name, e.g. {"file_name": "a.jpg", "captions": ["..."]}')


def _metadata_rows(path: Path) -> int:
    if path.suffix == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return len(lines) - (path.suffix == ".csv" and bool(lines))  # a CSV's first line is its header


def _tsv_rows(files: tuple, task_name: str) -> Iterator[dict]:
    task = get_task(task_name)
    layout = task.tsv_layout
    for stamp in files:
        path = Path(stamp[0])
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                fields = line.rstrip("\n").split("\t")
                row: dict[str, Any] = {"id": f"{path.name}:{lineno}", "image": {"bytes": b"", "path": None}}
                raw: dict[str, str] = {}
                if len(fields) == len(layout):  # a malformed line keeps an empty image: quarantined, not fatal
                    raw = dict(zip(layout, fields))
                    row["id"] = raw["id"]
                    # OFA's urlsafe base64; an undecodable one is an empty image, quarantined later
                    row["image"] = {"bytes": decode_base64(raw["image"]) or b"", "path": None}
                row.update(task.parse_tsv(raw))
                yield row


def _tsv_features(task):
    return Features({"id": Value("string"), "image": Image(decode=False), **task.column_features()})


def _open_tsv(path: Path, split: str, task):
    if path.is_dir():
        by_split: dict[str, list[Path]] = {}
        for f in sorted(path.glob("*.tsv")):
            by_split.setdefault(f.stem.rsplit("_", 1)[-1], []).append(f)
        if split not in by_split:
            raise UserError(f"split '{split}' not found in {path} (files <name>_<split>.tsv); "
                            f"available: {_available(by_split)}")
        files = by_split[split]
    else:
        files = [path]
    with files[0].open(encoding="utf-8") as fh:
        first = fh.readline().rstrip("\n").split("\t")
    layout = task.tsv_layout
    if layout is None:
        raise UserError(f"{files[0].name}: task {task.name} has no OFA TSV format")
    if len(first) != len(layout):
        raise UserError(
            f"{files[0].name} has {len(first)} tab-separated fields; "
            f"OFA's {task.name} TSV has {len(layout)}: {', '.join(layout)}"
        )
    return Dataset.from_generator(
        _tsv_rows, gen_kwargs={"files": tuple(file_stamp(f) for f in files), "task_name": task.name},
        features=_tsv_features(task),
    )


def _load_raw(src: str, split: str, task, image_root: str | None):
    """The source as a `Dataset` (columns not yet canonical)."""
    path = Path(src)
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            return load_saved(path, split, src)
        if (path / "state.json").is_file():  # one Dataset: it is the split asked for, unless it names another
            ds = load_saved(path, None, src)
            if ds.split is not None and str(ds.split) != split:
                raise UserError(f"split '{split}' not found in {src}; available: {ds.split}")
            return ds
        owner = open_owner_format(path, split, image_root)
        if owner is not None:
            return owner
        if any(path.glob("*.tsv")):
            return _open_tsv(path, split, task)
        if any(p.name in _METADATA_FILES for p in path.rglob("metadata.*")):
            _check_metadata_rows(path, src)
            return _pick_split(datasets.load_dataset("imagefolder", data_dir=str(path)), split, src)
        for ext, builder in (("parquet", "parquet"), ("arrow", "arrow")):
            if any(path.rglob(f"*.{ext}")):
                return _pick_split(datasets.load_dataset(builder, data_dir=str(path)), split, src)
        raise UserError(f"{src} is a folder but holds no dataset (save_to_disk, TSV, parquet/arrow, imagefolder "
                        f"metadata, or a benchmark's own files: {OWNER_FILES})")
    if path.is_file():
        owner = open_owner_format(path, split, image_root)  # recognised by content, whatever the file's name
        if owner is not None:
            return owner
        suffix = path.suffix.lower()
        if suffix == ".tsv":
            return _open_tsv(path, split, task)
        if suffix in (".parquet", ".arrow"):
            return datasets.load_dataset(suffix[1:], data_files={split: str(path)}, split=split)
        raise UserError(f"{src}: unsupported file (expected .parquet, .arrow, .tsv, or a benchmark's own file "
                        f"recognised by its content: {OWNER_FILES})")
    try:  # a Hub dataset id
        dd = datasets.load_dataset(src)
    except Exception as exc:  # noqa: BLE001 (offline, unknown id, bad config: one user-facing message)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot open data source '{src}': not a local path, "
                        f"and loading it from the Hub failed ({first})") from exc
    return _pick_split(dd, split, src)


# ---------------------------------------------------------------------------------------------------- normalisation
def _is_text(feature) -> bool:
    return isinstance(feature, Value) and feature.dtype in ("string", "large_string")


def _text_values(ds, task, column: str):
    """A list column of the task that the source holds as one string per row, parsed by the task."""
    def parse(batch):
        return {column: [task.text_value(column, v) for v in batch[column]]}

    return ds.map(parse, batched=True, desc=f"{column} from text")


def _canonicalise(ds, split: str, columns_map: Mapping[str, str], task, src: str, image_root: str | None):
    columns = canonical_columns()
    for canonical, source in columns_map.items():
        if canonical not in columns:
            raise UserError(f"`columns` {canonical}={source}: '{canonical}' is not a canonical column; "
                            f"choose from {', '.join(columns)}")
        if source not in ds.column_names:
            raise UserError(f"`columns` {canonical}={source}: column '{source}' not found; "
                            f"columns: {', '.join(ds.column_names)}")
    renames = {s: c for c, s in columns_map.items() if s != c}
    clash = [c for c in renames.values() if c in ds.column_names and c not in renames]
    ds = ds.remove_columns(clash).rename_columns(renames) if renames else ds

    for col in task.required_columns():
        if col not in ds.column_names:
            raise UserError(f"column '{col}' missing for task {task.name}; columns: {', '.join(ds.column_names)}")
    ds = ds.select_columns([c for c in columns if c in ds.column_names])

    if "id" not in ds.column_names:  # stable as long as the source and its order are: the row index
        ds = ds.add_column("id", [f"{split}-{i}" for i in range(len(ds))])
    elif ds.features["id"] != Value("string"):
        ds = ds.cast_column("id", Value("string"))
    for col, feature in task.column_features().items():
        if col in ds.column_names and _is_text(ds.features[col]) and not _is_text(feature):
            ds = _text_values(ds, task, col)
    ds = task.canonicalise(ds, src, split)
    feat = ds.features["image"]
    if isinstance(feat, Image):
        if feat.decode:
            ds = ds.cast_column("image", Image(decode=False))
    elif isinstance(feat, Value) and feat.dtype in ("string", "large_string"):
        root = Path(image_root) if image_root else (Path(src) if Path(src).is_dir() else Path(src).parent)
        def absolute(batch):
            return {"image": [resolve_image_path(p, root) for p in batch["image"]]}

        ds = ds.map(absolute, batched=True, desc="image paths")
        ds = ds.cast_column("image", Image(decode=False))
    else:
        raise UserError(f"column 'image' has type {feat}; expected an image, or a string path")
    return ds.select_columns([c for c in columns if c in ds.column_names])


def open_source(
    src: str | os.PathLike,
    split: str,
    columns_map: Mapping[str, str] | None,
    task,
    image_root: str | os.PathLike | None = None,
    limit: int | None = None,
):
    """`src` opened as a `datasets.Dataset` in canonical columns, validated for `task` (a `distill.tasks.Task`).

    `limit` keeps the first N rows. Raises `UserError` (one line) for a bad split, column or source.
    """
    src = os.fspath(src)
    image_root = os.fspath(image_root) if image_root is not None else None
    parts = split_parts(split)
    if len(parts) > 1:
        ds = _concatenate([open_source(src, p, columns_map, task, image_root) for p in parts], split, src)
        return ds.select(range(min(int(limit), len(ds)))) if limit is not None else ds
    ds = _load_raw(src, split, task, image_root)
    ds = _canonicalise(ds, split, dict(columns_map or {}), task, src, image_root)
    if limit is not None:
        ds = ds.select(range(min(int(limit), len(ds))))
    if len(ds) == 0:
        raise UserError(f"split '{split}' of {src} has no rows: point it at a dataset with examples")
    return ds


def is_streamed(src: str | os.PathLike, streaming: bool = False) -> bool:
    """The dispatch hook for streamed sources (`distill.streams`), read file by file and never opened whole here:
    a URL (`s3://...`, `hf://datasets/...`), a glob or brace pattern (`shards/{00000..00127}.tar`), a webdataset
    `.tar` file or a folder of them; with `streaming`, also a parquet file or folder and a Hub dataset id."""
    text = os.fspath(src)
    path = Path(text)
    if "://" in text or any(ch in text for ch in "*?[{"):
        return True
    if path.suffix == ".tar" or (path.is_dir() and any(path.glob("*.tar"))):
        return True
    return streaming and not (path.is_dir() and ((path / "state.json").is_file()
                                                 or (path / "dataset_dict.json").is_file()))


def ids_fingerprint(ds) -> str:
    """sha256 of the row ids in order: identifies the rows of a source independently of how it was opened."""
    h = hashlib.sha256()
    for batch in ds.select_columns(["id"]).with_format("arrow").iter(batch_size=65536):
        for v in batch.column("id").to_pylist():
            h.update(v.encode("utf-8"))
            h.update(b"\0")
    return h.hexdigest()


