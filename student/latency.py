"""Latency of a model at a fixed batch size: one timed `predict_rows` call per batch of rows, every call exactly
`batch_size` rows (rows are reused in turn when there are too few for `MIN_CALLS` calls), after one warm-up call.
The evaluate stage and `benchmarks/demo_latency.py` time models with it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from student.evaluate import LoadedModel, predict_rows

MIN_CALLS = 5
"""Fewest timed calls per batch size: a median (and its interval) needs several."""


@dataclass
class LatencyCalls:
    """What `time_calls` measured."""

    batch_size: int
    """Rows per call."""
    ms_per_sample: list[float]
    """Per timed call: model + decoding milliseconds over the call's rows (image loading excluded)."""
    texts: list[str]
    """The decoded outputs of the timed calls, in order (for checking that two runs computed the same)."""


def call_batches(rows: Sequence[Any], batch_size: int, min_calls: int = MIN_CALLS) -> list[list[Any]]:
    """`max(ceil(len(rows) / batch_size), min_calls)` batches of exactly `batch_size` rows, taking the rows in turn
    (wrapping around to the first row)."""
    if not rows or batch_size < 1:
        raise ValueError("call_batches needs rows and a positive batch size")
    n = len(rows)
    calls = max(-(-n // batch_size), min_calls)
    return [[rows[(k * batch_size + j) % n] for j in range(batch_size)] for k in range(calls)]


def time_calls(lm: LoadedModel, task, rows: Sequence[dict], batch_size: int, num_beams: int | None = None,
               candidates: Sequence[str] | None = None, min_calls: int = MIN_CALLS) -> LatencyCalls:
    """Time `lm` on `rows` at `batch_size` (see the module docstring)."""
    batches = call_batches(rows, batch_size, min_calls)
    predict_rows(lm, task, batches[0], batch_size, num_beams, candidates)  # warm-up: first-call allocations
    out = LatencyCalls(batch_size, [], [])
    for chunk in batches:
        res = predict_rows(lm, task, chunk, batch_size, num_beams, candidates)
        out.ms_per_sample.append(1000.0 * res.seconds / len(chunk))
        out.texts += res.texts
    return out
