"""A distilled dataset as training reads it: a `narvl-pipe distill` output folder, and which vocabulary its KD targets
are in (`target_vocabulary`, from the provenance the dataset carries, `distill.provenance`)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import datasets

from distill.errors import UserError
from distill.provenance import teacher_identity
from distill.prediction import tokenizer_sha256
from distill.sources import load_saved

__all__ = ["distill_output", "target_vocabulary", "needs_reencoding"]


def distill_output(path: Path, src: str, split: str):
    """A `narvl-pipe distill` output folder as a `Dataset` (its one split, whatever `split` says), or None when
    `path` is not one. An unfinished output is refused."""
    manifest_file = path / "manifest.json"
    if not manifest_file.is_file():
        return None
    manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():  # an earlier version's layout
        return load_saved(path, split, src)
    if manifest.get("status") != "complete":
        raise UserError(f"{src} is an unfinished distill output (manifest status {manifest.get('status')!r}): "
                        "rerun the same distill command")
    files = sorted(str(p) for p in (path / "data").glob("*.parquet"))
    if not files:
        raise UserError(f"{src} holds no parquet shards (data/*.parquet)")
    # data_files, not the folder: the cache is then keyed on the files (a folder's cache is keyed on its card)
    return datasets.load_dataset("parquet", data_files={"train": files}, split="train")


def target_vocabulary(src: str | os.PathLike | None, ds, tokenizer) -> tuple[bool, str]:
    """(re-encode?, the line saying which) for a distilled dataset's `target_ids`: the teacher's ids are learned as
    they are only when its recorded tokenizer hash (`distill.provenance.teacher_identity`: the dataset's features,
    else an older output's local manifest) equals the student tokenizer's; when it differs or is unknown, each
    target is re-encoded from the canonical prediction (`Task.student_target`); a dataset without one is refused."""
    mine = tokenizer_sha256(tokenizer)
    teacher = teacher_identity(ds, src if src is not None and Path(src).is_dir() else None) or {}
    theirs = teacher.get("tokenizer_sha256")
    if theirs == mine:
        return False, f"KD targets: the teacher's ids as they are (its tokenizer is the student's, sha256 {mine[:12]})"
    why = (f"the teacher's tokenizer (sha256 {theirs[:12]}) is not the student's ({mine[:12]})" if theirs
           else "the teacher's tokenizer is not recorded in the data")
    if "target" not in ds.column_names:
        raise UserError(f"{src}: {why}, and its rows hold no canonical `target` to re-encode: distil with a "
                        "teacher sharing the student's tokenizer")
    return True, f"KD targets: re-encoded from `target` in the student's vocabulary ({why})"


def needs_reencoding(src: str | os.PathLike | None, ds, tokenizer) -> bool:
    """Whether `target_ids` must be re-encoded for `tokenizer` (see `target_vocabulary`)."""
    return target_vocabulary(src, ds, tokenizer)[0]
