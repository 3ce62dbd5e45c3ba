"""The paper's claims, checked on evaluate-stage records with paired intervals (`student.intervals`).

A claim compares two systems of one task:
- quality: the student's score >= `kd_quality_ratio` x the reference's (a paired ratio of means over the rows both
  scored), or, for tasks with a point margin, student - reference >= -margin (a paired difference);
- KD > raw: the KD student's score - the raw student's > 0 (a paired difference);
- speed: the reference's ms/sample over the student's > 1, at each latency batch size both measured with the same
  statistic (the ratio of their medians over timed calls, its interval over the calls).
A claim is PASS only when its whole 95% interval clears the threshold, FAIL when the whole interval is on the wrong
side, "inconclusive" otherwise. Missing per-row scores or timed calls, all-zero scores, or latencies measured at
different batch sizes never give a PASS: the claim says why.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from student.intervals import Interval, median_ratio, paired_difference, paired_ratio


def claim(task: str, text: str, verdict: str, detail: str) -> dict[str, Any]:
    """One checked claim as the report stores it (`passed`: the verdict is PASS)."""
    return {"task": task, "claim": text, "verdict": verdict, "passed": verdict == "PASS", "detail": detail}


def row_pairs(a: dict, b: dict) -> tuple[np.ndarray, np.ndarray, str] | str:
    """(a's per-row scores, b's, a note on the rows) aligned row by row, or why the two cannot be paired. Rows pair
    by position when both scored the same ids in the same order, else by id over the rows both scored."""
    for e in (a, b):
        scores, ids = e.get("row_scores"), e.get("row_ids")
        if scores is None or ids is None:
            return f"{e['label']} has no per-row scores"
        if len(scores) != len(ids):
            return f"{e['label']}: {len(scores)} per-row scores for {len(ids)} row ids"
    if a["row_ids"] == b["row_ids"]:
        n = len(a["row_ids"])
        return np.asarray(a["row_scores"], float), np.asarray(b["row_scores"], float), f"{n} paired rows"
    if any(len(set(e["row_ids"])) < len(e["row_ids"]) for e in (a, b)):
        return "the two scored different rows, and repeated ids make them impossible to pair"
    sb = dict(zip(b["row_ids"], b["row_scores"]))
    common = [(s, sb[i]) for i, s in zip(a["row_ids"], a["row_scores"]) if i in sb]
    if not common:
        return "the two scored no row in common"
    x, y = (np.asarray(v, float) for v in zip(*common))
    return x, y, f"{len(common)} paired rows (of {len(a['row_ids'])} and {len(b['row_ids'])} scored)"


def _guarded(verdict: str, *scores: np.ndarray) -> tuple[str, str]:
    """All-zero scores are no evidence for a claim: a PASS on them becomes inconclusive, and so does any verdict
    when every side scored zero everywhere."""
    zero = [not np.any(s) for s in scores]
    if all(zero):
        return "inconclusive", "; every score is zero: nothing to compare"
    if verdict == "PASS" and any(zero):
        return "inconclusive", "; all-zero scores are never a pass"
    return verdict, ""


def quality_claim(task: str, student: dict, ref: dict, metric: str, ratio: float | None,
                  margin: float | None, prefix: str) -> dict[str, Any]:
    """The student close to the reference: a paired ratio >= `ratio`, or a paired difference >= -`margin`."""
    if margin is not None:
        text = f"{prefix}{student['label']} {metric} within {margin:g} points of {ref['label']} or better"
        return _difference_claim(task, text, student, ref, -margin, strict=False)
    text = f"{prefix}{student['label']} {metric} >= {ratio:g} x {ref['label']}"
    scores = f"{student['score']:.1f} vs {ref['score']:.1f}"
    pairs = row_pairs(student, ref)
    if isinstance(pairs, str):
        return claim(task, text, "inconclusive", f"{scores}; not paired: {pairs}")
    s, r, rows = pairs
    if not np.any(r):
        return claim(task, text, "inconclusive", f"{scores}; {ref['label']}'s scores are all zero: no ratio")
    iv = paired_ratio(s, r)
    verdict, note = _guarded(iv.verdict(ratio), s, r)
    return claim(task, text, verdict, f"{scores}; ratio {iv.text(3)}, {rows}{note}")


def better_claim(task: str, kd: dict, raw: dict, metric: str, prefix: str) -> dict[str, Any]:
    """KD above raw: a paired difference > 0."""
    return _difference_claim(task, f"{prefix}{kd['label']} {metric} > {raw['label']}", kd, raw, 0.0, strict=True)


def _difference_claim(task: str, text: str, a: dict, b: dict, threshold: float, strict: bool) -> dict[str, Any]:
    """"a - b >= threshold" (`strict`: ">") on the paired difference of their per-row scores."""
    scores = f"{a['score']:.1f} vs {b['score']:.1f}"
    pairs = row_pairs(a, b)
    if isinstance(pairs, str):
        return claim(task, text, "inconclusive", f"{scores}; not paired: {pairs}")
    x, y, rows = pairs
    iv = paired_difference(x, y)
    verdict, note = _guarded(iv.verdict(threshold, strict), x, y)
    return claim(task, text, verdict, f"{scores}; difference {_signed(iv)}, {rows}{note}")


def latency_by_batch(entry: dict) -> dict[int, dict]:
    """Batch size -> {"ms_per_sample", "statistic", "calls", "call_ms"?} of an evaluate record (older records: their
    one `latency_batch_size`); {} without latency (a baseline)."""
    if entry.get("latency"):
        return {int(b): v for b, v in entry["latency"].items()}
    if entry.get("ms_per_sample") is None:
        return {}
    b = entry.get("latency_batch_size", entry.get("batch_size"))
    return {int(b): {"ms_per_sample": entry["ms_per_sample"], "statistic": entry.get("latency_statistic", "mean"),
                     "calls": entry.get("latency_calls", 1)}} if b is not None else {}


def comparable(ref: dict, entry: dict) -> list[int]:
    """The batch sizes at which both were timed with the same statistic (never a batch-32 mean over a batch-1
    median)."""
    a, b = latency_by_batch(ref), latency_by_batch(entry)
    return sorted(k for k in a.keys() & b.keys() if a[k]["statistic"] == b[k]["statistic"])


def speedup(ref: dict, entry: dict, batch: int) -> Interval | float:
    """The reference's ms/sample over the entry's at `batch`: with its interval when both recorded their timed
    calls (paired by call when they timed the same number), else the bare ratio."""
    a, b = latency_by_batch(ref)[batch], latency_by_batch(entry)[batch]
    if a.get("call_ms") and b.get("call_ms"):
        return median_ratio(a["call_ms"], b["call_ms"], paired=len(a["call_ms"]) == len(b["call_ms"]))
    return a["ms_per_sample"] / b["ms_per_sample"]


def speed_claims(task: str, student: dict, ref: dict, prefix: str) -> list[dict[str, Any]]:
    """The student faster than the reference, one claim per batch size both measured alike."""
    text = f"{prefix}{student['label']} faster than {ref['label']}"
    batches = comparable(ref, student)
    if not batches:
        seen = "; ".join(f"{e['label']}: " + (", ".join(f"batch {b} {v['statistic']}" for b, v in
                                                        latency_by_batch(e).items()) or "no latency")
                         for e in (ref, student))
        return [claim(task, text, "inconclusive", f"not compared: no batch size timed alike for both ({seen})")]
    out = []
    for b in batches:
        sp = speedup(ref, student, b)
        if isinstance(sp, Interval):
            verdict = sp.verdict(1.0, strict=True)
            detail = f"{sp.estimate:.3f}x [{sp.low:.3f}, {sp.high:.3f}] over {sp.rows} timed calls"
        else:
            verdict, detail = "inconclusive", f"{sp:.3f}x, no timed calls recorded: no interval"
        out.append(claim(task, f"{text} at batch {b}", verdict, detail))
    return out


def _signed(iv: Interval) -> str:
    return f"{iv.estimate:+.1f} [{iv.low:+.1f}, {iv.high:+.1f}]"
