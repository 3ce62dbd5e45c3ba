"""`DieWithParent`: a DataLoader `worker_init_fn` that makes each worker exit as soon as the process that created it
dies, even by SIGKILL.

Without it, a `kill -9` of a run leaves its DataLoader workers behind: torch's own watchdog only checks the parent
between index-queue reads, and a worker whose result pipe is full blocks at exit on its queue's feeder thread, so
orphans were seen alive minutes later (holding the run's inherited file descriptors).

Two mechanisms, because neither covers every case alone:
- Linux: `prctl(PR_SET_PDEATHSIG, SIGKILL)`, the kernel kills the worker when its parent *thread* exits (DataLoader
  workers are started by the thread that iterates the loader, the main thread here);
- everywhere: a daemon thread polls every `interval` seconds and `os._exit`s (no feeder-thread join) once the parent
  is gone (the worker was re-parented, or the parent pid no longer exists).
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one, else every core)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _parent_gone(parent: int, first_ppid: int) -> bool:
    if os.getppid() != first_ppid:
        return True  # re-parented to init / a subreaper: the parent exited
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class DieWithParent:
    """Pass as `DataLoader(worker_init_fn=DieWithParent())`, built in the process that iterates the loader."""

    def __init__(self, interval: float = 0.5, keep_signals: bool = False):
        self.parent = os.getpid()
        self.interval = interval
        self.keep_signals = keep_signals
        """True for a process that handles Ctrl-C / SIGTERM itself (a `--jobs` stage: its trainer saves)."""

    def __call__(self, worker_id: int) -> None:
        # Ctrl-C and SIGTERM (a Slurm preemption) reach the whole process group: the main process handles them
        # (flushes its shards, saves a checkpoint) and its workers end with it, without tracebacks of their own.
        if not self.keep_signals:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent of a forked/spawned worker is the main process; under forkserver it is the server, which
        # itself exits with the main process. Either way: watch the parent seen now, and the main process.
        first_ppid = os.getppid()
        if _parent_gone(self.parent, first_ppid):
            os._exit(1)  # the parent died before the death signal was armed
        threading.Thread(target=self._watch, args=(first_ppid,), name="die-with-parent", daemon=True).start()

    def _watch(self, first_ppid: int) -> None:
        while not _parent_gone(self.parent, first_ppid):
            time.sleep(self.interval)
        os._exit(1)
