"""Per-row scores (their mean is each task's metric; caption: pycocoevalcap's own CIDEr) and the bootstrap intervals
built on them: coverage, width with the row count, and why paired intervals matter for two systems on one split."""
from __future__ import annotations

import random

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from distill.shapes import ShapesConfig, generate_example
from distill.tasks import get_task
from student.intervals import (mean_interval, median_ratio, paired_difference, paired_ratio,
                               unpaired_difference)


@pytest.fixture(scope="module")
def rows():
    cfg = ShapesConfig(n_train=0, n_val=0, n_test=40, size=32, seed=3)
    return [generate_example(cfg, "test", i).row for i in range(cfg.n_test)]


def test_caption_row_scores_are_pycocoevalcaps_per_image_cider(rows):
    task = get_task("caption")
    rng = random.Random(0)
    # a mixed system: some right captions, some another image's, some a word dropped
    preds = [r["captions"][0] if i % 3 == 0 else rows[(i + 1) % len(rows)]["captions"][0] if i % 3 == 1
             else " ".join(r["captions"][1].split()[:-1]) for i, r in enumerate(rows)]
    rng.shuffle(preds)
    refs = [list(r["captions"]) for r in rows]
    # pycocoevalcap end to end: its own tokenizer and scorer over the whole set (corpus idf)
    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in refs[i]] for i in range(len(rows))})
    res = tok.tokenize({i: [{"caption": preds[i]}] for i in range(len(rows))})
    corpus, per_image = Cider().compute_score(gts, res)

    scores = task.row_scores(preds, rows)
    assert scores == pytest.approx([100 * s for s in per_image])
    assert np.mean(scores) == pytest.approx(100 * corpus) == pytest.approx(task.evaluate(preds, rows)["cider"])
    assert len(set(np.round(scores, 6))) > 5  # per image, not one value repeated


def test_every_tasks_row_scores_average_to_its_metric(rows):
    vqa, grounding, entailment = get_task("vqa"), get_task("grounding"), get_task("entailment")
    answers = [r["answers"][0] if i % 2 else "blue" for i, r in enumerate(rows)]
    boxes = [list(r["box"]) if i % 3 else [0, 0, 2, 2] for i, r in enumerate(rows)]
    boxes[5] = None  # not exactly 4 bins decoded: a miss
    labels = ["yes" if i % 4 else "maybe" for i in range(len(rows))]
    for task, preds in [(vqa, answers), (grounding, boxes), (entailment, labels)]:
        scores = task.row_scores(preds, rows)
        metric = next(iter(task.evaluate(preds, rows).values()))
        assert len(scores) == len(rows) and np.mean(scores) == pytest.approx(metric)
        assert 0 < metric < 100  # hits and misses both present: the comparison means something
    assert grounding.row_scores(boxes, rows)[5] == 0.0


def test_interval_contains_the_estimate_covers_the_mean_and_narrows_with_rows():
    rng = np.random.default_rng(7)
    small, large = rng.binomial(1, 0.6, 50) * 100.0, rng.binomial(1, 0.6, 800) * 100.0
    a, b = mean_interval(small), mean_interval(large)
    for iv, x in ((a, small), (b, large)):
        assert iv.low <= iv.estimate <= iv.high and iv.rows == len(x)
        assert iv.estimate == pytest.approx(x.mean())
    assert (b.high - b.low) < 0.5 * (a.high - a.low)  # ~1/sqrt(16) as wide
    # coverage of the true mean (60) over many simulated splits: about 95%
    covered = 0
    for k in range(200):
        iv = mean_interval(rng.binomial(1, 0.6, 100) * 100.0, resamples=1000, seed=k)
        covered += iv.low <= 60.0 <= iv.high
    assert 0.88 <= covered / 200 <= 0.99
    assert mean_interval(small) == mean_interval(list(small))  # seeded: the same rows, the same interval


def test_paired_intervals_see_a_small_consistent_gain_that_unpaired_ones_miss():
    rng = np.random.default_rng(0)
    hardness = rng.random(300) * 100  # both systems score similarly on each row
    a = np.clip(hardness + rng.normal(0, 2, 300) + 3, 0, None)  # system a: 3 points better, row by row
    b = np.clip(hardness + rng.normal(0, 2, 300), 0, None)
    paired, unpaired = paired_difference(a, b), unpaired_difference(a, b)
    assert paired.estimate == pytest.approx(a.mean() - b.mean()) == pytest.approx(unpaired.estimate)
    assert paired.low > 0 and paired.verdict(0.0, strict=True) == "PASS"
    assert unpaired.low < 0 < unpaired.high and unpaired.verdict(0.0, strict=True) == "inconclusive"
    assert (paired.high - paired.low) < 0.2 * (unpaired.high - unpaired.low)

    ratio = paired_ratio(b, a)
    assert ratio.estimate == pytest.approx(b.mean() / a.mean()) and ratio.low <= ratio.estimate <= ratio.high
    assert ratio.verdict(1.0) == "FAIL" and ratio.verdict(0.9) == "PASS"  # b is 0.94x a, clearly


def test_ratio_of_zero_scores_and_degenerate_inputs():
    with pytest.raises(ValueError, match="denominator"):
        paired_ratio([1.0, 2.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="same rows"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="non-empty"):
        mean_interval([])
    sparse = paired_ratio([100.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 100.0])  # resamples without b's hit: inf
    assert sparse.estimate == 1.0 and sparse.high == float("inf") and sparse.verdict(0.9) == "inconclusive"


def test_median_ratio_pairs_calls_when_asked():
    rng = np.random.default_rng(1)
    load = rng.lognormal(0, 0.5, 60)  # machine load shared by call i of both systems
    teacher, student = 10 * load * rng.lognormal(0, 0.02, 60), 4 * load * rng.lognormal(0, 0.02, 60)
    paired, unpaired = median_ratio(teacher, student, paired=True), median_ratio(teacher, student, paired=False)
    assert paired.estimate == pytest.approx(np.median(teacher) / np.median(student))
    assert paired.low <= paired.estimate <= paired.high and paired.verdict(1.0, strict=True) == "PASS"
    assert (paired.high - paired.low) < (unpaired.high - unpaired.low)
