"""The `baseline` stage: each task's constant is learned from train and scored on test, checked against the
constants and scores recomputed here from the rows (Counter, numpy mean, an IoU written out)."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from datasets import load_from_disk

from pipelines.baseline import BaselineConfig, run_baseline
from distill.shapes import ShapesConfig, write_shapes


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("baseline")
    return write_shapes(root / "world", ShapesConfig(n_train=60, n_val=2, n_test=30, size=32, tokenizer_vocab_size=300))


def _run(world, tmp_path, task):
    out = tmp_path / task
    out.mkdir()
    record = run_baseline(BaselineConfig(task=task, data=str(world)), out)
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert json.loads((out / "metrics.json").read_text())["score"] == record["score"]
    return record, preds


def test_entailment_and_vqa_constants_are_the_most_frequent_training_labels(world, tmp_path):
    dd = load_from_disk(str(world))
    train, test = dd["train"], dd["test"]
    word = {"entailment": "yes", "contradiction": "no", "neutral": "maybe"}
    label = Counter(train["label"]).most_common(1)[0][0]
    record, preds = _run(world, tmp_path, "entailment")
    assert record["constant"] == word[label] and record["model_type"] == "baseline" and record["ms_per_sample"] is None
    assert record["score"] == pytest.approx(100 * np.mean([word[x] == word[label] for x in test["label"]]))
    assert [p["id"] for p in preds] == test["id"] and preds[0]["input"] == test[0]["hypothesis"]

    answer = Counter(a[0] for a in train["answers"]).most_common(1)[0][0]  # the world's 10 answers are all equal
    record, preds = _run(world, tmp_path, "vqa")
    assert record["constant"] == answer
    assert record["score"] == pytest.approx(100 * np.mean([a[0] == answer for a in test["answers"]]))
    assert preds[1]["reference"] == test[1]["answers"][0] and preds[1]["input"] == test[1]["question"]


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_grounding_constant_is_the_mean_relative_box(world, tmp_path):
    dd = load_from_disk(str(world))
    mean = np.mean(np.array(dd["train"]["box"]) / 32, axis=0)  # every world image is 32 x 32
    record, preds = _run(world, tmp_path, "grounding")
    assert record["constant"] == pytest.approx(mean.tolist())
    expected = 100 * np.mean([_iou(mean * 32, box) >= 0.5 for box in dd["test"]["box"]])
    assert record["score"] == pytest.approx(expected)
    assert preds[0]["prediction"] == pytest.approx((mean * 32).tolist())
    assert preds[0]["reference"] == "[" + ", ".join(f"{v:.0f}" for v in dd["test"][0]["box"]) + "]"


def test_caption_constant_is_the_most_frequent_training_caption(world, tmp_path):
    from distill.tasks.metrics import cider_d

    dd = load_from_disk(str(world))
    captions = [c.replace(",", "") for row in dd["train"]["captions"] for c in row]  # cleaned: no punctuation
    counts = Counter(captions)
    record, preds = _run(world, tmp_path, "caption")
    assert counts[record["constant"]] == max(counts.values())
    assert record["score"] == pytest.approx(cider_d([record["constant"]] * 30, dd["test"]["captions"]))
    assert preds[0]["reference"] == dd["test"][0]["captions"][0].replace(",", "") and preds[0]["input"] == ""
