"""Latency of a model at a fixed batch size: one timed `predict_rows` call per batch of rows, every call exactly
`batch_size` rows (rows are reused in turn when there are too few for `MIN_CALLS` calls), after one warm-up call.
The evaluate stage and `benchmarks/demo_latency.py` time models with it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from distill.seam import Model
from student.evaluate import predict_rows

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


def time_calls(model: Model, task, rows: Sequence[dict], batch_size: int, settings: dict,
               min_calls: int = MIN_CALLS) -> LatencyCalls:
    """Time `model` (decoding with `settings`, `Model.settings`) on `rows` at `batch_size` (see the module
    docstring)."""
    batches = call_batches(rows, batch_size, min_calls)
    predict_rows(model, task, batches[0], settings, batch_size)  # warm-up: first-call allocations
    out = LatencyCalls(batch_size, [], [])
    for chunk in batches:
        res = predict_rows(model, task, chunk, settings, batch_size)
        out.ms_per_sample.append(1000.0 * res.seconds / len(chunk))
        out.texts += [p.text for p in res.predictions]
    return out
