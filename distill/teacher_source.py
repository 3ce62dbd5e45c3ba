"""Where a `distill` teacher comes from: a local folder or a Hub id, checked without loading anything."""
from __future__ import annotations

import hashlib
from pathlib import Path

from distill.errors import UserError
from distill.hub_ids import resolve_model_folder

WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
)


def folder_sha256(folder: Path, names: tuple[str, ...] = ("config.json", *WEIGHT_FILES)) -> str:
    """sha256 over the named files of `folder` that exist (name, then content), in that order."""
    h = hashlib.sha256()
    for name in names:
        f = folder / name
        if f.is_file():
            h.update(name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 24), b""):
                    h.update(chunk)
    return h.hexdigest()


def resolve_teacher(teacher: str, revision: str | None) -> tuple[Path, dict]:
    """The teacher folder and its identity ({"id", "revision"} for the Hub, {"id", "sha256"} for a folder).

    Checks that the folder holds a config and tokenizer files, without loading anything.
    """
    folder, ident = resolve_model_folder(teacher, revision, field="teacher")
    has_bpe = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    if not ((folder / "tokenizer.json").is_file() or has_bpe or (folder / "tokenizer.model").is_file()):
        raise UserError(f"teacher {teacher} has no tokenizer files (tokenizer.json, or vocab.json + merges.txt)")
    if "revision" not in ident:
        ident["sha256"] = folder_sha256(folder)
    return folder, ident
