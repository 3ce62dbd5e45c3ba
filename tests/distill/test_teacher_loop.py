"""`distill.teacher_loop.worker_count`: DataLoader workers only where they have a core of their own."""
from __future__ import annotations

import os

import pytest

from distill.teacher_loop import worker_count


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs 2 usable cores to pin to 1 and 2")
def test_default_workers_leave_a_core_to_the_teacher():
    cores = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(cores)})
        assert worker_count(None) == 0  # one core: the workers would only take the teacher's time
        assert worker_count(3) == 3  # what the user asks for stands
        os.sched_setaffinity(0, set(sorted(cores)[:2]))
        assert worker_count(None) == 1
    finally:
        os.sched_setaffinity(0, cores)
    assert worker_count(None) == min(2, len(cores) - 1)
