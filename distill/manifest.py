"""`OUT/manifest.json`, a distill output's identity and record: when a run may write `OUT`, when there is nothing to
do, and the finishing step that makes `OUT` a complete dataset (quarantine, card, manifest).

The run identity (`key`) is what makes two runs' rows interchangeable: task, teacher (Hub revision or file hashes),
generation settings, resolution, source (path or files, split, columns, limit, row ids), shard size, images. Every
process of every task compares it with the manifest it finds: the same key works along (several tasks may write
into one output), a different key is refused unless `overwrite`. Only computed results pin the key: a manifest left
by a run that wrote nothing (it crashed loading the model) is replaced. No lock is taken: the first process writes
the manifest (create-if-absent), the others read it.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from distill import shards as sh
from distill.card import PERCENTILES, STAT_COLUMNS, CardInput, public_name, render_card
from distill.errors import UserError
from distill.outputs import check_output_dir
from distill.packages import package_version
from distill.store import Store
from distill.tasks import get_task

LEGACY_FILES = ("state.json", "dataset_info.json")
"""Files of an output written by earlier narvl-pipe versions (a `save_to_disk` folder)."""


def _json(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def has_results(store: Store) -> bool:
    """True when the output holds anything a run computed (a shard, a marker or a flushed part)."""
    return bool(store.list(sh.DATA_DIR) or store.list(sh.DONE) or store.list(sh.PARTS)
                or any(store.exists(f) for f in LEGACY_FILES))


def clear_output(store: Store) -> None:
    """Remove what a run wrote (for `overwrite`), the files of an earlier version's layout included."""
    for folder in (sh.DATA_DIR, sh.WORK, "shards", ".assembling"):
        store.remove_tree(folder)
    for name in (sh.MANIFEST, sh.QUARANTINE, sh.CARD, *LEGACY_FILES):
        store.remove(name)
    for name in store.list(""):
        if name.startswith("data-") and name.endswith(".arrow"):
            store.remove(name)


def _refuse_different(store: Store, old: dict, new: dict) -> None:
    if any(store.exists(f) for f in LEGACY_FILES):
        raise UserError(f"{store.display()} holds the output of an earlier narvl-pipe (a save_to_disk folder; it "
                        "still loads in train-student, evaluate and push); pass `overwrite` to distil again into "
                        "parquet shards, or use another `out`")
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    detail = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:3])
    raise UserError(f"{store.display()} was made by a different run ({detail}); "
                    "pass `overwrite` to replace it, or use another `out`")


def prepare(store: Store, record: dict, overwrite: bool) -> dict | None:
    """The finished manifest when this very run is complete in `store` (nothing is written: a read-only output is
    fine), else make sure the manifest of this run is there (written if absent) and return None."""
    record = _json(record)
    manifest = store.read_json_or_none(sh.MANIFEST)
    same = manifest is not None and manifest.get("key") == record["key"]
    if same and manifest.get("status") == "complete" and not overwrite:
        return manifest
    if store.local:  # writability is needed from here on: one clear line, not a PermissionError
        check_output_dir(store.root)
    if same and not overwrite:
        return None
    computed = has_results(store)
    if manifest is None and computed and not overwrite:
        raise UserError(f"{store.display()} holds shards but no manifest.json; pass `overwrite` to start over")
    if manifest is not None and computed and not overwrite:
        _refuse_different(store, manifest.get("key", {}), record["key"])
    if computed or manifest is not None:
        clear_output(store)
    if not store.create(sh.MANIFEST, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode()):
        found = store.read_json_or_none(sh.MANIFEST) or {}
        if found.get("key") != record["key"]:  # another run of another identity got there first
            _refuse_different(store, found.get("key", {}), record["key"])
    return None


def _metric_implementation(task_name: str, rows: list[dict]) -> str:
    """What `narvl-pipe evaluate` scores this task with (named on the dataset card), from the first rows'
    references (VQA: OFA's confidences when the rows carry them)."""
    return get_task(task_name).metric_implementation(rows)


def static_record(key: dict, source: dict, config, units: list[dict], teacher: dict | None,
                  metric_rows: list[dict]) -> dict:
    """The manifest of a run, with status \"running\". `teacher` is the teacher's `ModelIdentity.record()`:
    family, source, tokenizer hash (`teacher_identity`); `units` the plan (`Unit.record()`, shard file)."""
    record = {
        "key": key,
        "narvl_pipe_version": package_version(),
        "task": key["task"],
        "teacher": key["teacher"],
        "generation": key["generation"],
        "source": source,
        "shard_size": config.shard_size,
        "shards": len(units),
        "units": units,
        "images": config.images,
        "metric_implementation": _metric_implementation(key["task"], metric_rows),
        "load": "datasets.load_dataset(<this folder>)",
        "status": "running",
        "config": {k: v for k, v in asdict(config).items() if k not in ("progress", "task_index", "num_tasks")},
    }
    if teacher is not None:
        record["teacher_identity"] = teacher
    return _json(record)


def card_input(features, manifest: dict) -> CardInput:
    """What the card says about the data of a finished output (recorded in its manifest by `finalise`)."""
    card = manifest["card"]
    return CardInput(features, card["splits"], card["statistics"], card["download_size"], manifest["task"])


def public_manifest(manifest: dict) -> dict:
    """The manifest as published by `push`: without the run's local settings and paths (a local teacher or source
    is named by its folder name; its hashes identify it)."""
    out = {k: v for k, v in manifest.items() if k not in ("key", "config")}
    for section in ("teacher", "source"):
        if isinstance(out.get(section), dict):
            out[section] = {k: public_name(v) if k in ("id", "data") else v for k, v in out[section].items()}
    if isinstance(out.get("teacher_identity"), dict):
        ident = out["teacher_identity"]
        out["teacher_identity"] = {**ident, "source": {k: public_name(v) if k == "id" else v
                                                       for k, v in (ident.get("source") or {}).items()}}
    return out


def finalise(store: Store, features, split: str, num_units: int, card_name: str, this_run: dict) -> dict:
    """Make the output complete once every unit has its marker: `quarantine.jsonl` (every unit's, in unit order),
    the card, then the manifest with status \"complete\" (written last), then `.work/` is removed. Idempotent:
    tasks that finish together may all run it."""
    markers = [sh.read_marker(store, i) for i in range(num_units)]
    missing = [i for i, m in enumerate(markers) if m is None]
    if missing and (store.read_json_or_none(sh.MANIFEST) or {}).get("status") == "complete":
        return store.read_json(sh.MANIFEST)  # another task finished it meanwhile (and removed the markers)
    if missing:
        raise UserError(f"{store.display()}: units {missing[:5]} have no completion marker")
    with store.open_write(sh.QUARANTINE) as fh:
        for m in markers:
            for rec in m["quarantine"]:
                fh.write((json.dumps(rec) + "\n").encode("utf-8"))
    rows, failures = sum(m["rows"] for m in markers), sum(len(m["quarantine"]) for m in markers)
    manifest = store.read_json(sh.MANIFEST)
    manifest.update({
        "status": "complete", "rows": rows, "failures": failures, "shards": num_units,
        "shards_complete": num_units, "wall_time_s": round(sum(m.get("seconds", 0.0) for m in markers), 3),
        "last_run": _json(this_run),
    })
    stats = []
    for col in STAT_COLUMNS:
        merged = sh.merged_stats([m["stats"].get(col, {}) for m in markers], PERCENTILES)
        if merged is not None:
            stats.append({"split": sh.split_name(split), "column": col,
                          **{k: f"{float(v):.3f}" for k, v in merged.items()}})
    size = sum(m.get("bytes", 0) for m in markers)
    manifest["card"] = {"splits": {sh.split_name(split): {"rows": rows, "bytes": size}}, "statistics": stats,
                        "download_size": size}
    store.write_bytes(sh.CARD, str(render_card(card_input(features, manifest), manifest, card_name)).encode("utf-8"))
    store.write_json(sh.MANIFEST, manifest)
    store.remove_tree(sh.WORK)
    return manifest
