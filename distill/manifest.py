"""`DIR/manifest.json`, a distill run's identity and record: who may write `DIR`, and when there is nothing to do.

The run identity (`key`) is what makes two runs' rows interchangeable: task, teacher (Hub revision or file hashes),
generation settings, resolution, source (path, split, columns, limit, row ids), shard size, images. A resume must
have the same key; a different key is refused unless `overwrite`. Only computed results pin the key: a manifest
left by a run that crashed before its first flush (corrupt weights, out of memory at model load) is replaced.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from distill import shards as sh
from distill.errors import UserError
from distill.outputs import check_output_dir
from distill.packages import package_version
from distill.tasks import get_task


def check_identity(out: Path, key: dict, overwrite: bool) -> None:
    """Refuse (or, with `overwrite`, clear) an output made by a different run. Only computed results pin the run
    identity: a manifest left by a run that wrote nothing (it crashed loading the model, say) is simply replaced."""
    manifest_file = out / sh.MANIFEST
    computed = sh.has_results(out)
    if not manifest_file.is_file():
        if computed and not overwrite:
            raise UserError(f"{out} holds shards but no manifest.json; pass `overwrite` to start over")
        if computed:
            sh.clear_output(out)
        return
    old = sh.read_json(manifest_file).get("key", {})
    new = json.loads(json.dumps(key, default=str))
    if old != new:
        if overwrite or not computed:
            sh.clear_output(out)
            return
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        detail = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:3])
        raise UserError(f"{out} was made by a different run ({detail}); "
                        "pass `overwrite` to replace it, or use another `out`")


def finished(out: Path, key: dict) -> dict | None:
    """The manifest of a complete output made by this very run, else None."""
    if not (sh.is_assembled(out) and (out / sh.MANIFEST).is_file()):
        return None
    manifest = sh.read_json(out / sh.MANIFEST)
    same = manifest.get("key") == json.loads(json.dumps(key, default=str))
    return manifest if same and manifest.get("status") == "complete" else None


def claim(out: Path, lock: sh.RunLock, key: dict, ds, config, num_shards: int,
          teacher: dict | None = None) -> dict | None:
    """Rank 0: the finished manifest when there is nothing to do (nothing is written then, so a read-only output
    works), else take the lock, check the run identity and write the "running" manifest (returns None)."""
    if not config.overwrite:
        done = finished(out, key)
        if done is not None:
            try:  # tidy what a crash after the final step left, when we may; reading needs no lock
                if lock.acquire():
                    sh.remove_shards(out)
            except OSError:
                pass
            return done
    check_output_dir(out)
    if not lock.acquire():
        raise UserError(f"another distill run (pid {lock.holder()}) is writing {out}; "
                        "wait for it, or use another `out`")
    check_identity(out, key, config.overwrite)
    (out / sh.SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    manifest = sh.read_json(out / sh.MANIFEST) if (out / sh.MANIFEST).is_file() else {"wall_time_s": 0.0}
    manifest.update(static_record(key, ds, config, num_shards, teacher))
    sh.write_json(out / sh.MANIFEST, manifest)
    return None


def _metric_implementation(task_name: str, ds) -> str:
    """What `narvl-pipe evaluate` scores this task with (named on the dataset card), from the first rows'
    references (VQA: OFA's confidences when the rows carry them)."""
    task = get_task(task_name)
    columns = [c for c in task.reference_columns if c in ds.column_names]
    rows = ds.select_columns(columns).select(range(min(len(ds), 64))) if columns else ()
    return task.metric_implementation(list(rows))


def static_record(key: dict, ds, config, num_shards: int, teacher: dict | None = None) -> dict:
    """The manifest fields fixed for the whole run (identity, source, layout), with status \"running\".
    `teacher` is the teacher's `TeacherIdentity.record()`: family, source, tokenizer hash (`teacher_identity`:
    `student.data` compares the tokenizer hash with the student's)."""
    record = {
        "key": json.loads(json.dumps(key, default=str)),
        "narvl_pipe_version": package_version(),
        "task": key["task"],
        "teacher": key["teacher"],
        "generation": key["generation"],
        "source": {"data": key["data"], "split": key["split"], "columns": key["columns"], "limit": key["limit"],
                   "fingerprint": getattr(ds, "_fingerprint", None), "ids_sha256": key["source_ids_sha256"],
                   "num_rows": key["num_rows"]},
        "shard_size": config.shard_size,
        "shards": num_shards,
        "images": config.images,
        "metric_implementation": _metric_implementation(key["task"], ds),
        "load": "datasets.load_from_disk(<this folder>)",
        "status": "running",
        "config": {k: v for k, v in asdict(config).items() if k not in ("progress",)},
    }
    if teacher is not None:
        record["teacher_identity"] = json.loads(json.dumps(teacher, default=str))
    return record


def finalise(out: Path, rows: int, failures: int, num_shards: int, new_rows: int, wall: float,
             world_size: int) -> None:
    """Mark the manifest of an assembled output complete, with its counts and this run's wall time."""
    manifest = sh.read_json(out / sh.MANIFEST)
    manifest.update({
        "status": "complete", "rows": rows, "failures": failures, "shards": num_shards,
        "shards_complete": num_shards, "wall_time_s": round(manifest.get("wall_time_s", 0.0) + wall, 3),
        "last_run": {"wall_time_s": round(wall, 3), "new_rows": new_rows, "world_size": world_size},
    })
    sh.write_json(out / sh.MANIFEST, manifest)


def teacher_tokenizer_sha256(folder: str | Path) -> str | None:
    """The teacher tokenizer hash a distill output's manifest records (None: no manifest, or one written before
    teachers were recorded)."""
    f = Path(folder) / sh.MANIFEST
    if not f.is_file():
        return None
    return (sh.read_json(f).get("teacher_identity") or {}).get("tokenizer_sha256")
