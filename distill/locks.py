"""`ProcessLock`: an exclusive, non-blocking lock on a file that belongs to the one process that took it.

Used for `narvl-pipe run`'s `OUT/.narvl-run.lock` (distill outputs are shared by claims instead, `distill.claims`).

Why POSIX record locks (`fcntl.lockf`, i.e. `F_SETLK`) and not `flock` or OFD locks (`F_OFD_SETLK`): `flock` and
OFD locks belong to the open file *description*, which `fork()` shares with every child. A DataLoader worker
forked while the run held the lock kept it alive after a `kill -9` of the run, so the documented recovery ("re-run
the same command") was refused until the orphans exited. A POSIX record lock belongs to the *process*: a forked
child does not hold it, and the kernel drops it the moment its holder exits, even by SIGKILL. The fd is also opened
`O_CLOEXEC`, so an exec'd child does not even see it.

POSIX locks have two quirks, handled here: the same process may "re-lock" a file it already locks (so a registry
refuses a second holder inside one process), and closing *any* fd of the file drops the process's lock (so a second
`ProcessLock` on a held path never opens the file).
"""
from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

_HELD: dict[str, int] = {}
"""Real path of each lock file held in this process -> the pid that took it (a forked child inherits the dict,
not the lock: the pid tells them apart)."""
_GUARD = threading.Lock()


class ProcessLock:
    """`acquire()` (non-blocking, False when another process or another holder in this process has it), `release()`;
    a context manager that releases on exit. The file holds the holder's pid, for humans."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None
        self._key: str | None = None

    def acquire(self) -> bool:
        key = os.path.realpath(self.path)
        with _GUARD:
            if _HELD.get(key) == os.getpid():
                return False  # held in this process: opening and closing the file again would drop that lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # EAGAIN/EACCES: another process holds it
                os.close(fd)
                return False
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            _HELD[key] = os.getpid()
            self._fd, self._key = fd, key
            return True

    def holder(self) -> str:
        """The pid written by the current holder ('?' if unreadable), for messages."""
        if _HELD.get(os.path.realpath(self.path)) == os.getpid():
            return str(os.getpid())  # never open the file here: closing that fd would drop our own lock
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self._fd is None:
            return
        with _GUARD:
            if _HELD.get(self._key) == os.getpid():  # never in a forked child: it does not hold the lock
                fcntl.lockf(self._fd, fcntl.LOCK_UN)
                del _HELD[self._key]
            os.close(self._fd)
            self._fd = self._key = None

    def __enter__(self) -> "ProcessLock":
        return self  # acquired explicitly (e.g. by rank 0 only); the context manager guarantees the release

    def __exit__(self, *exc) -> None:
        self.release()
