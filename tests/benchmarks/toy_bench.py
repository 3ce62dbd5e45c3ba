"""Sides for the harness's own test: pure Python, no model, so each worker starts in a fraction of a second."""
import itertools
import os
import subprocess
import sys

from timing import Timed


def side(kind: str):
    """`prepare(case) -> thunk` for a side of kind `kind`."""
    def prepare(case: str):
        n = int(case) if case.isdigit() else 0
        calls = itertools.count(1)
        return {
            "loop": lambda: sum(range(n)),
            "formula": lambda: n * (n - 1) // 2,
            "off_by_one": lambda: n * (n - 1) // 2 + 1,
            "drifting": lambda: next(calls),  # a different output every call
            "counted": lambda: Timed(float(next(calls)), "same", {"call": n}),  # its own 'seconds': 1, 2, 3...
            "environment": lambda: {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")},
            "affinity": lambda: {"self": sorted(os.sched_getaffinity(0)), "child": subprocess.run(
                [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"], capture_output=True,
                text=True, check=True).stdout.strip()},
        }[kind]
    return prepare
