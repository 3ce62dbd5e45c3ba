"""Load a `save_pretrained` model folder, with one line naming the file when its weights cannot be read.

`transformers` reports a truncated `model.safetensors` as "Error while deserializing header", a truncated
`pytorch_model.bin` as a zip-archive RuntimeError and an empty one as a bare EOFError, all with a traceback and
without the file's name. Every command that loads weights (distill's teacher, train-teacher/train-student `init`,
evaluate and predict) goes through `load_pretrained`, which turns those into a `UserError`.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import torch
from safetensors import safe_open

from distill.errors import UserError

__all__ = ["WEIGHT_FILES", "load_pretrained", "unreadable_weights"]

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
"""The weight files `from_pretrained` looks for, in its order of preference."""


def _first_line(exc: BaseException) -> str:
    """The first sentence of the error (torch's zip errors run on for several)."""
    text = str(exc).strip()
    return text.splitlines()[0].split(". ")[0][:200] if text else type(exc).__name__


def _probe(path: Path) -> str | None:
    """Why `path` (one weights file) cannot be read, or None if its header/archive opens."""

    if not path.is_file():
        return "file missing"
    if path.stat().st_size == 0:
        return "empty file"
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:  # checks the header covers the whole file
                f.keys()
        else:
            # A zip checkpoint (torch.save since 1.6) opens with mmap, its tensors left on disk; a legacy pickle
            # (or garbage) has to be read.
            torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # noqa: BLE001 (any failure to open is the answer)
        return _first_line(exc)
    return None


def unreadable_weights(folder: str | os.PathLike) -> tuple[Path, str] | None:
    """(file, reason) for the weights `from_pretrained` would read from `folder` when they are missing, truncated
    or corrupt; None when they open (or `folder` is not a local folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    present = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not present:
        return folder / WEIGHT_FILES[0], f"no weights file ({' or '.join(WEIGHT_FILES[::2])})"
    chosen = present[0]
    if chosen.name.endswith(".index.json"):  # sharded: check every shard the index names
        try:
            shards = sorted(set(json.loads(chosen.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as exc:
            return chosen, _first_line(exc)
        for shard in shards:
            why = _probe(folder / shard)
            if why:
                return folder / shard, why
        return None
    why = _probe(chosen)
    return (chosen, why) if why else None


def load_pretrained(cls, folder: str | os.PathLike, **kwargs):
    """`cls.from_pretrained(folder, **kwargs)`; a missing, truncated or corrupt weights file raises `UserError`
    naming it (other failures propagate unchanged)."""
    try:
        return cls.from_pretrained(os.fspath(folder), **kwargs)
    except Exception as exc:
        bad = unreadable_weights(folder)
        if bad is None:
            raise
        path, why = bad
        if why.startswith("no weights file"):
            raise UserError(f"{folder} has {why}: point it at a complete save_pretrained folder") from exc
        raise UserError(f"cannot read weights file {path} ({why}): it is truncated or corrupt; download or "
                        "save the checkpoint again") from exc
