"""One-line checks of an output location, run before any compute by every command that writes a folder or a file
(distill, train-student, train-teacher, evaluate's predictions file).

A read-only folder or a path that is an existing file otherwise surfaces as a traceback from deep inside a library,
possibly after the model was loaded; here it is a `UserError` (exit 2) that says what to do.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from distill.errors import UserError


def check_output_dir(path: str | os.PathLike, writable: bool = True, what: str = "output folder") -> Path:
    """`path` as a folder that can be written: refused when it is an existing file; with `writable`, created if
    missing and probed by writing (and removing) a temporary file, which catches read-only permissions and
    read-only file systems alike. `writable=False` only checks the kind (for a run that may turn out to be a no-op)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is an existing file; give a folder path (it is created if missing)")
    if not writable:
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"{what} {path} is not writable ({exc.strerror or type(exc).__name__}); "
                        "choose a writable folder or fix its permissions") from None
    return path


def check_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """`path` as a file that can be written: not an existing folder, and its folder writable (created if missing)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is an existing folder; give a file path")
    check_output_dir(path.parent, what=f"the folder of {path.name}")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{what} {path} is not writable; choose another path or fix its permissions")
    return path
