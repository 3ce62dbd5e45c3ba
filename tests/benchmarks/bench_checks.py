"""What every benchmark's JSON must show, checked the same way for each: the harness record."""
from __future__ import annotations

import os
import statistics

import pytest


def check_harness(result: dict, rounds: int, cores: list[int], threads: int = 1, torch: bool = True) -> None:
    """Pinning as the workers report it, rounds kept, orders alternated, each pair's ratio recomputed from the
    recorded per-round times, outputs checked, and the context (load, machine, versions) recorded."""
    h = result["harness"]
    assert h["rounds"] == rounds and h["warmup_rounds_dropped"] >= 1 and h["threads"] == threads
    assert h["cores"] == [cores] and all(a == cores for a in h["pinning"].values()), h["pinning"]
    assert all(t in (None, threads) for t in h["torch_threads"].values())
    assert not torch or all(v.get("torch") for v in h["versions"].values())
    assert len(h["load_average_before"]) == 3 and len(h["load_average_after"]) == 3
    assert h["machine"]["cpu_count"] == os.cpu_count()
    times = result["times"]
    assert times and all(len(v) == rounds for v in times.values())
    for orders in result["orders"]:  # each run of the session
        assert len(orders) == rounds and all(b == a[::-1] for a, b in zip(orders, orders[1:]))
    assert set(result["digests"]) >= set(times)
    assert result["pairs"]
    for p in result["pairs"]:
        ratios = [b / a for a, b in zip(times[p["a"]], times[p["b"]])]
        assert p["speedup_per_round"] == pytest.approx(ratios)
        assert p["speedup"] == pytest.approx(statistics.median(ratios))
        assert (p["speedup_min"], p["speedup_max"]) == pytest.approx((min(ratios), max(ratios)))
        if p["same_outputs"]:
            assert result["digests"][p["a"]] == result["digests"][p["b"]] and p["outputs"] == "equal every round"


def pinned_cores() -> list[int]:
    """The core set the benchmark tests pin to: the last usable core."""
    return sorted(os.sched_getaffinity(0))[-1:]
