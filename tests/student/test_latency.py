"""The latency calls of the evaluate stage: every call exactly the batch size, rows taken in turn, enough calls."""
import pytest

from student.latency import MIN_CALLS, call_batches


def test_calls_hold_exactly_the_batch_size_and_take_rows_in_turn():
    rows = list(range(10))
    assert call_batches(rows, 1) == [[i] for i in rows]  # one call per row when that is enough calls
    calls = call_batches(rows, 4)
    assert len(calls) == MIN_CALLS and all(len(c) == 4 for c in calls)
    assert sum(calls, []) == (rows * 2)[:4 * MIN_CALLS]  # wrapped around, in order
    big = call_batches(rows, 64)
    assert len(big) == MIN_CALLS and all(len(c) == 64 for c in big)  # batch 64 from 10 rows: rows repeat
    assert len(call_batches(list(range(100)), 8)) == 13  # ceil(100 / 8)
    with pytest.raises(ValueError):
        call_batches([], 8)
