"""Where a distilled dataset came from, stored inside the dataset so that it travels with it (`push` ->
`load_dataset`, a Hub download, a single parquet shard read alone).

Two places, both read and written here only:
- the `id` of the `target_ids` element feature (`List(Value("int32", id=<JSON>))`): `datasets` keeps a feature's
  `id` through parquet files, the card's `dataset_info`, `load_dataset` (streaming too), `map`, `filter` and
  `save_to_disk`, so every copy of the dataset says which teacher vocabulary its ids are in. It holds the
  dataset-wide record: task, teacher identity (family, source with revision or sha256, tokenizer sha256, prompt
  template and the family's other settings), generation settings, narvl-pipe version;
- each parquet shard's schema metadata (`narvl_pipe`): the same record plus the shard's input unit (file, rows).
Outputs of earlier narvl-pipe versions (a `save_to_disk` folder) recorded the teacher only in their local
`manifest.json`; `teacher_identity` still reads it from there.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from datasets import Features, List, Value

from distill.packages import package_version

TARGET_IDS = "target_ids"
MANIFEST = "manifest.json"


def provenance(task: str, teacher: dict[str, Any], generation: dict[str, Any]) -> dict[str, Any]:
    """The dataset-wide record (`teacher`: `ModelIdentity.record()`; a local teacher folder is named by its folder
    name: its sha256 identifies it, and nothing machine-local is published)."""
    source = dict(teacher.get("source") or {})
    if isinstance(source.get("id"), str) and os.path.isabs(source["id"]):
        source["id"] = os.path.basename(source["id"].rstrip("/"))
    teacher = {**teacher, "source": source}
    return json.loads(json.dumps({"task": task, "teacher": teacher, "generation": generation,
                                  "narvl_pipe_version": package_version()}, default=str, sort_keys=True))


def with_provenance(features: Features, record: dict[str, Any]) -> Features:
    """`features` whose `target_ids` element carries `record` as its `id`."""
    out = Features(features)
    out[TARGET_IDS] = List(Value("int32", id=json.dumps(record, sort_keys=True)))
    return out


def read_provenance(features) -> dict[str, Any] | None:
    """The record a dataset's features carry (None: none, e.g. a dataset made by hand or by an older version)."""
    feature = (features or {}).get(TARGET_IDS)
    ident = getattr(getattr(feature, "feature", None), "id", None)
    if not ident:
        return None
    try:
        record = json.loads(ident)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def shard_metadata(record: dict[str, Any], unit: dict[str, Any]) -> dict[bytes, bytes]:
    """The `narvl_pipe` schema metadata of one shard: the record and its input unit."""
    return {b"narvl_pipe": json.dumps({**record, "unit": unit}, sort_keys=True).encode()}


def teacher_identity(ds, src: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The teacher identity of a distilled dataset: from its features, else from the `manifest.json` of the local
    folder `src` (outputs of earlier versions); None when unknown."""
    record = read_provenance(getattr(ds, "features", None))
    if record is not None:
        return record.get("teacher")
    if src is not None and (Path(src) / MANIFEST).is_file():
        manifest = json.loads((Path(src) / MANIFEST).read_text(encoding="utf-8"))
        return manifest.get("teacher_identity")
    return None
