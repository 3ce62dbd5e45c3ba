"""Percentile bootstrap intervals for evaluation scores: the mean of per-row scores (one system), and the difference
or ratio of two systems' means scored on the same rows (paired: both resampled with the same row indices).

Rows are resampled with replacement `resamples` times from a seeded numpy generator, so an interval is reproducible;
the interval is the (1 - level)/2 and (1 + level)/2 percentiles of the resampled statistic. Pairing matters: two
systems that fail on the same hard rows have correlated scores, and the paired interval of their difference is
much narrower than one built from two independent resamplings.

Also here: `median_ratio`, the interval of a ratio of medians of timed calls (speed-ups), paired by call when both
systems timed the same calls.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

LEVEL = 0.95
"""Coverage of every interval."""
RESAMPLES = 2000
"""Bootstrap resamples per interval."""
SEED = 0
"""Seed of the resampling generator (the same rows give the same interval)."""
_CHUNK_VALUES = 4_000_000  # resampled indices held at once (resamples x rows): bounded memory on large splits


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile bootstrap interval."""

    estimate: float
    """The statistic on all rows (mean, difference or ratio)."""
    low: float
    """Lower end of the interval."""
    high: float
    """Upper end of the interval (inf: a resample's denominator was 0)."""
    level: float
    """Coverage, e.g. 0.95."""
    resamples: int
    """Bootstrap resamples."""
    rows: int
    """Rows (or timed calls) resampled."""
    method: str
    """How it was resampled, e.g. "percentile bootstrap, paired rows"."""

    def to_dict(self) -> dict:
        return asdict(self)

    def verdict(self, threshold: float, strict: bool = False) -> str:
        """For a claim "statistic >= threshold" (`strict`: ">"): PASS when the whole interval clears it, FAIL when the
        whole interval is below it, "inconclusive" otherwise."""
        passed = self.low > threshold if strict else self.low >= threshold
        failed = self.high <= threshold if strict else self.high < threshold
        return "PASS" if passed else "FAIL" if failed else "inconclusive"

    def text(self, digits: int = 1) -> str:
        """`431.9 [420.1, 443.0]`."""
        return f"{self.estimate:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def _resampled(columns: Sequence[np.ndarray], statistic: Callable[..., np.ndarray], resamples: int,
               seed: int) -> np.ndarray:
    """`statistic` of each resample; every column is indexed by the same resampled rows (pairing)."""
    n = len(columns[0])
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_VALUES // n)
    out = []
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        out.append(statistic(*(c[idx] for c in columns)))
    return np.concatenate(out)


def _interval(estimate: float, stats: np.ndarray, n: int, level: float, method: str) -> Interval:
    tail = 100 * (1 - level) / 2
    # inf (a zero denominator) breaks linear interpolation: take actual resampled values then
    how = "linear" if np.isfinite(stats).all() else "inverted_cdf"
    low, high = np.percentile(stats, [tail, 100 - tail], method=how)
    return Interval(float(estimate), float(low), float(high), level, len(stats), n, method)


def _array(scores: Sequence[float], name: str) -> np.ndarray:
    a = np.asarray(scores, dtype=np.float64)
    if a.ndim != 1 or len(a) == 0:
        raise ValueError(f"{name}: need a non-empty list of per-row scores")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: per-row scores must be finite")
    return a


def _pair(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = _array(a, "a"), _array(b, "b")
    if len(a) != len(b):
        raise ValueError(f"paired scores need the same rows: {len(a)} vs {len(b)}")
    return a, b


def mean_interval(scores: Sequence[float], level: float = LEVEL, resamples: int = RESAMPLES,
                  seed: int = SEED) -> Interval:
    """The mean of per-row scores (the task metric) with its bootstrap interval over rows."""
    a = _array(scores, "scores")
    return _interval(a.mean(), _resampled([a], lambda x: x.mean(axis=1), resamples, seed), len(a), level,
                     "percentile bootstrap over rows")


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = LEVEL, resamples: int = RESAMPLES,
                      seed: int = SEED) -> Interval:
    """mean(a) - mean(b) for two systems scored on the same rows (row i of `a` and of `b` is the same row)."""
    a, b = _pair(a, b)
    stats = _resampled([a, b], lambda x, y: x.mean(axis=1) - y.mean(axis=1), resamples, seed)
    return _interval(a.mean() - b.mean(), stats, len(a), level, "percentile bootstrap, paired rows")


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, inf where den is 0 (an undefined ratio must widen the interval, not vanish from it)."""
    safe = np.where(den == 0, 1.0, den)
    return np.where(den == 0, np.inf, num / safe)


def paired_ratio(a: Sequence[float], b: Sequence[float], level: float = LEVEL, resamples: int = RESAMPLES,
                 seed: int = SEED) -> Interval:
    """mean(a) / mean(b) for two systems scored on the same rows. `b`'s mean must be positive; a resample whose `b`
    mean is 0 counts as an infinite ratio (the interval then reaches inf: too few rows to say)."""
    a, b = _pair(a, b)
    if b.mean() <= 0:
        raise ValueError("paired_ratio: the denominator's mean score is not positive")
    stats = _resampled([a, b], lambda x, y: _ratio(x.mean(axis=1), y.mean(axis=1)), resamples, seed)
    return _interval(a.mean() / b.mean(), stats, len(a), level, "percentile bootstrap, paired rows")


def unpaired_difference(a: Sequence[float], b: Sequence[float], level: float = LEVEL, resamples: int = RESAMPLES,
                        seed: int = SEED) -> Interval:
    """mean(a) - mean(b) with a and b resampled independently (rows not shared, or pairing ignored)."""
    a, b = _array(a, "a"), _array(b, "b")
    sa = _resampled([a], lambda x: x.mean(axis=1), resamples, seed)
    sb = _resampled([b], lambda x: x.mean(axis=1), resamples, seed + 1)
    return _interval(a.mean() - b.mean(), sa - sb, min(len(a), len(b)), level, "percentile bootstrap, unpaired")


def median_ratio(num: Sequence[float], den: Sequence[float], paired: bool, level: float = LEVEL,
                 resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """median(num) / median(den) of two lists of timed calls (e.g. teacher ms over student ms: a speed-up).
    `paired`: call i of both lists timed the same inputs (resampled together); else resampled independently."""
    a, b = (_pair(num, den) if paired else (_array(num, "num"), _array(den, "den")))
    if np.median(b) <= 0:
        raise ValueError("median_ratio: the denominator's median is not positive")
    med = lambda x: np.median(x, axis=1)  # noqa: E731
    if paired:
        stats = _resampled([a, b], lambda x, y: _ratio(med(x), med(y)), resamples, seed)
    else:
        stats = _ratio(_resampled([a], med, resamples, seed), _resampled([b], med, resamples, seed + 1))
    how = "percentile bootstrap over timed calls, " + ("paired" if paired else "unpaired")
    return _interval(np.median(a) / np.median(b), stats, min(len(a), len(b)), level, how)
