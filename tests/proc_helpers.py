"""Process checks shared by the kill-and-resume tests (Linux /proc)."""
from __future__ import annotations

from pathlib import Path


def children(pid: int) -> list[int]:
    """The live child processes of `pid`."""
    kids = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids += [int(k) for k in (task / "children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):  # it just exited: the caller reports that
        return []
    return kids


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie has exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")
