"""JSON on disk as every stage writes it: plain JSON values, atomic (crash-safe) writes."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any


def jsonable(value: Any) -> Any:
    """Plain JSON types: a dataclass becomes its dict, tuples lists, anything else (paths...) its `str`; mapping
    order is kept."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.loads(json.dumps(value, default=str))


def atomic_write_text(path: str | os.PathLike, text: str, fsync: bool = False) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`: readers see the old or the new
    file, never a torn one. `fsync`: the bytes are on disk before the rename (survives a power loss)."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """`data` as indented, key-sorted JSON, written atomically and fsynced."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", fsync=True)


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))
