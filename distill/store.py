"""A folder on any fsspec filesystem (local path, `s3://`, `gs://`, `memory://`...), with the few operations the
distill output needs, each with the atomicity it can have there.

- `write_bytes` / `open_write`: a reader sees the whole file or none of it. Local: a temporary name in the same
  folder, fsync, `os.replace`. Object stores: an object appears only when its PUT (or multipart upload) completes,
  so writing the final key directly is atomic; `memory://` commits a file when it is closed.
- `create(rel, data)`: create-if-absent. Local: `O_CREAT | O_EXCL` (exclusive, also on NFSv3+). Object stores have
  no portable create-if-absent: the file is written and read back, and only a write that reads back as its own
  counts; two writers racing in that window may both believe they won (see `distill.claims`: this only costs
  duplicate work, never a duplicate row).
- listings are never served from fsspec's listing cache (another task may have written since).
"""
from __future__ import annotations

import contextlib
import json
import os
import posixpath
import uuid
from typing import Any, Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem


class Store:
    """The folder `url` (created on first write). Paths given to the methods are relative, '/'-separated."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        self.url = str(url)
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root = self.root.rstrip("/") or "/"

    def path(self, rel: str = "") -> str:
        """The filesystem path of `rel` (what `self.fs` takes)."""
        return posixpath.join(self.root, rel) if rel else self.root

    def display(self, rel: str = "") -> str:
        """`rel` as the user names it: a local path, or a URL with its protocol."""
        if self.local:
            return self.path(rel)
        return self.url.rstrip("/") + ("/" + rel if rel else "")

    def _fresh(self) -> None:
        self.fs.invalidate_cache()

    # ------------------------------------------------------------------------------------------------ reading
    def exists(self, rel: str) -> bool:
        self._fresh()
        return self.fs.exists(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        """The file's bytes; `FileNotFoundError` when absent."""
        return self.fs.cat_file(self.path(rel))

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def read_json_or_none(self, rel: str) -> Any:
        """The JSON of `rel`, or None when absent or torn (a writer killed mid-write on a non-atomic store)."""
        try:
            return self.read_json(rel)
        except (FileNotFoundError, ValueError):
            return None

    def list(self, rel: str) -> list[str]:
        """Names of the files directly in folder `rel` (sorted; [] when absent)."""
        self._fresh()
        try:
            entries = self.fs.ls(self.path(rel), detail=True)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") != "directory")

    def open_read(self, rel: str):
        return self.fs.open(self.path(rel), "rb")

    # ------------------------------------------------------------------------------------------------ writing
    def makedirs(self, rel: str) -> None:
        self.fs.makedirs(self.path(rel), exist_ok=True)

    @contextlib.contextmanager
    def open_write(self, rel: str) -> Iterator[Any]:
        """A binary file that appears under `rel` whole, when the block ends without an exception."""
        final = self.path(rel)
        if not self.local:
            self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
            with self.fs.open(final, "wb") as fh:
                yield fh
            return
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = f"{final}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(tmp, "wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.open_write(rel) as fh:
            fh.write(data)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode("utf-8"))

    def create(self, rel: str, data: bytes) -> bool:
        """Create `rel` holding `data` unless it exists; True when this call created it (see the module doc)."""
        final = self.path(rel)
        if self.local:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            try:
                fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            return True
        if self.exists(rel):
            return False
        self.write_bytes(rel, data)
        try:
            return self.read_bytes(rel) == data
        except FileNotFoundError:
            return False

    def remove(self, rel: str) -> None:
        """Delete a file (absent: nothing to do)."""
        try:
            self.fs.rm_file(self.path(rel))
        except FileNotFoundError:
            pass

    def remove_tree(self, rel: str) -> None:
        """Delete a folder and everything in it (absent: nothing to do)."""
        self._fresh()
        try:
            if self.fs.exists(self.path(rel)):
                self.fs.rm(self.path(rel), recursive=True)
        except FileNotFoundError:
            pass
