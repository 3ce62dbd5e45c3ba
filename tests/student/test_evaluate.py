"""`evaluate` / `predict` for both kinds of model, checked against direct computations: a 3-line greedy CTC
collapse for NARVL, and `OFAModel.generate()` row by row for the AR teacher."""
from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import datasets
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # the suite runs with --import-mode=importlib
import student_helpers as h  # noqa: E402

from distill.errors import UserError  # noqa: E402



@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from distill.image_processing import OFAImageProcessor
    from distill.ofa import OFAModel
    from distill.tokenizer import load_ofa_tokenizer
    from student.evaluate import save_model_folder
    from student.modeling_narvl import NARVLModel

    root = tmp_path_factory.mktemp("eval")
    world = h.make_world(root, n_train=8, n_val=6)
    teacher = h.make_teacher(world, root / "teacher", "caption", 2)
    torch.manual_seed(0)
    student = NARVLModel.from_ofa(OFAModel.from_pretrained(str(teacher)), num_queries=8, task="caption")
    save_model_folder(student, load_ofa_tokenizer(teacher), OFAImageProcessor.from_pretrained(str(teacher)),
                      root / "student")
    return world, teacher, root / "student"


def _inputs(lm, task, row):
    from student.data import encode_prompts

    return encode_prompts([row], task, lm.tokenizer, lm.image_processor)


def test_evaluate_narvl_is_greedy_ctc(models, tmp_path):
    from distill.tasks import get_task
    from distill.tasks.metrics import caption_metric_implementation, caption_scores
    from student.evaluate import EvalResult, evaluate, load_model

    world, _, student = models
    res = evaluate(student, "caption", world, split="validation", batch_size=4, limit=6, out=tmp_path / "p.jsonl",
                   progress=False)
    assert isinstance(res, EvalResult) and res.kind == "narvl" and res.num_samples == 6 and res.ms_per_sample > 0
    lines = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    rows = list(datasets.load_from_disk(str(world))["validation"])[:6]
    assert [x["id"] for x in lines] == [r["id"] for r in rows]

    lm, task = load_model(student, "cpu"), get_task("caption")
    blank, eos = lm.model.config.blank_id, lm.tokenizer.eos_token_id
    expected = []
    for row in rows:  # batch 1, no padding: an independent path through the model
        with torch.no_grad():
            best = lm.model(**_inputs(lm, task, row)).logits[0].argmax(-1).tolist()
        merged = [k for k, _ in itertools.groupby(best) if k not in (blank, lm.tokenizer.pad_token_id)]
        ids = merged[: merged.index(eos)] if eos in merged else merged
        expected.append(task.decode(ids, row, lm.tokenizer))
    assert [x["prediction"] for x in lines] == expected == res.predictions
    assert res.metrics == pytest.approx(caption_scores(expected, [r["captions"] for r in rows]))  # pycocoevalcap
    assert res.metric_implementation == caption_metric_implementation() and "pycocoevalcap" in res.line()


def test_evaluate_ar_matches_generate(models):
    from distill.tasks import get_task
    from student.evaluate import evaluate, load_model

    world, teacher, _ = models
    res = evaluate(teacher, "caption", world, split="validation", batch_size=3, limit=3, progress=False)
    assert res.kind == "ofa"
    lm, task = load_model(teacher, "cpu"), get_task("caption")
    rows = list(datasets.load_from_disk(str(world))["validation"])[:3]
    expected = []
    for row in rows:
        with torch.no_grad():
            out = lm.model.generate(**_inputs(lm, task, row), **task.generate_kwargs(lm.tokenizer))
        expected.append(task.decode(out[0, 1:].tolist(), row, lm.tokenizer))
    assert res.predictions == expected


def test_other_tasks_and_predict(models, tmp_path):
    from student.evaluate import evaluate, predict

    world, teacher, student = models
    ent = evaluate(teacher, "entailment", world, limit=3, progress=False)  # AR: candidates scored, as OFA does
    assert set(ent.predictions) <= {"yes", "no", "maybe"} and "accuracy" in ent.metrics
    assert ent.metric_implementation.startswith("exact-match accuracy")
    grd = evaluate(student, "grounding", world, limit=3, progress=False)  # a box only from exactly 4 bins
    assert all(p is None or len(p) == 4 for p in grd.predictions) and "acc@0.5" in grd.metrics

    image = tmp_path / "img.png"
    datasets.load_from_disk(str(world))["test"][0]["image"].save(image)
    res = h.cli("predict", "--model", student, "--task", "caption", "--image", image)
    assert res.stdout.strip() == predict(student, "caption", str(image)).prediction
    h.cli("predict", "--model", teacher, "--task", "entailment", "--image", image, "--text", "a red circle")
    with pytest.raises(UserError, match="--text is required"):
        predict(student, "vqa", str(image))
    with pytest.raises(UserError, match="--answers"):
        predict(teacher, "vqa", str(image), text="what color is the circle")
    out = h.cli("evaluate", "--model", student, "--task", "caption", "--data", world, "--limit", "2",
                "--out", tmp_path / "e.jsonl")
    assert "cider=" in out.stdout and "ms/sample" in out.stdout and "meteor=" in out.stdout
    assert "metric: pycocoevalcap" in out.stdout
    assert len((tmp_path / "e.jsonl").read_text().splitlines()) == 2
