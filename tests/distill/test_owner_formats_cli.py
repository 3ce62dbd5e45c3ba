"""`narvl-pipe distill` and `narvl-pipe evaluate` on the benchmarks' own files (tiny copies, `owner_copies.py`) with
a tiny random OFA teacher: the distilled rows are the source's rows, with their references, and evaluate scores
the evaluation split. VQA decodes over an answer list pickled with numpy integer labels, as a
`trainval_ans2label.pkl` may be."""
from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "student"))
from distill_helpers import make_teacher  # noqa: E402
from owner_copies import REFS, SNLI_VE, VQA_QUESTIONS, write_refcoco, write_snli_ve, write_vqav2  # noqa: E402
from student_helpers import cli  # noqa: E402

from typer.testing import CliRunner  # noqa: E402

from distill.errors import UserError  # noqa: E402
from student.data import load_training_data  # noqa: E402


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    # long enough for SNLI-VE's premise + hypothesis prompts in this byte-level BPE
    return make_teacher(tmp_path_factory.mktemp("owner") / "teacher", resolution=32, max_positions=192)


def _distil_and_evaluate(tmp_path: Path, teacher: Path, task: str, data: Path, eval_split: str,
                         *extra: str) -> tuple[datasets.Dataset, list[dict], str]:
    out = tmp_path / "kd"
    res = cli("distill", "--task", task, "--teacher", teacher, "--data", data, "--out", out, "--num-workers", "0",
              "--batch-size", "4", "--num-beams", "2", *extra)
    print(res.output)  # the run's own lines, for the record
    preds = tmp_path / "preds.jsonl"
    ev = cli("evaluate", "--model", teacher, "--task", task, "--data", data, "--split", eval_split, "--out", preds,
             "--batch-size", "4", *extra)
    print(ev.output)
    return (load_training_data(out), [json.loads(ln) for ln in preds.read_text().splitlines()],
            ev.output)


def test_vqav2_distils_and_evaluates(tmp_path, teacher):
    root = write_vqav2(tmp_path / "vqa")
    answers = tmp_path / "trainval_ans2label.pkl"  # OFA's answer -> label dict, labels as numpy integers
    answers.write_bytes(pickle.dumps({a: np.int64(i) for i, a in enumerate(["yes", "no", "red", "2", "cup"])}))
    ds, preds, output = _distil_and_evaluate(tmp_path, teacher, "vqa", root, "validation", "--answers", answers)
    train = VQA_QUESTIONS["train2014"]
    assert ds["id"] == [str(qid) for _, qid, _, _ in train] and ds["question"] == [q for _, _, q, _ in train]
    assert ds["answers"] == [a for *_, a in train]  # the 10 human answers travel with the teacher's target
    assert set(ds["target"]) <= {"yes", "no", "red", "2", "cup"}  # decoded over the numpy-labelled list
    assert [p["id"] for p in preds] == ["42000", "73000"]  # val2014, the CLI's `validation`
    # each prediction line carries the row's inputs and references beside the output (issue 22, point 4)
    assert [(p["question"], p["answers"]) for p in preds] == [(q, a) for _, _, q, a in VQA_QUESTIONS["val2014"]]
    assert "vqa_accuracy=" in output and "vqaEval" in output


def test_vqav2_test_split_distils_but_cannot_be_scored(tmp_path, teacher):
    """test2015 ships questions only: the teacher's answers need no reference, a score does."""
    from pipelines.cli import app

    root = write_vqav2(tmp_path / "vqa")
    (tmp_path / "answers.txt").write_text("yes\nno\n")
    out = tmp_path / "kd-test"
    cli("distill", "--task", "vqa", "--teacher", teacher, "--data", root, "--split", "test", "--out", out,
        "--num-workers", "0", "--batch-size", "4", "--answers", tmp_path / "answers.txt")
    ds = load_training_data(out)
    assert ds["id"] == ["1000", "5000"] and ds["answers"] == [[], []] and set(ds["target"]) <= {"yes", "no"}
    res = CliRunner().invoke(app, ["evaluate", "--model", str(teacher), "--task", "vqa", "--data", str(root),
                                   "--split", "test", "--answers", str(tmp_path / "answers.txt")])
    assert isinstance(res.exception, UserError) and "no non-empty answer" in str(res.exception), res.output


def test_refcoco_distils_and_evaluates(tmp_path, teacher):
    folder = write_refcoco(tmp_path / "data")
    ds, preds, output = _distil_and_evaluate(tmp_path, teacher, "grounding", folder, "validation")
    train = [(f"{r}-{s}", sent) for r, _, split, sents in REFS if split == "train" for s, sent in sents]
    assert ds["id"] == [i for i, _ in train] and ds["region_text"] == [t for _, t in train]
    assert ds["box"][0] == [1.5, 2.0, 11.5, 10.25]  # the reference box, x0 y0 x1 y1 in pixels
    assert all(b is None or len(b) == 4 for b in ds["target_box"])
    assert [p["id"] for p in preds] == ["2-4"] and "acc@0.5=" in output


def test_snli_ve_distils_and_evaluates(tmp_path, teacher):
    root = write_snli_ve(tmp_path / "ve")
    ds, preds, output = _distil_and_evaluate(tmp_path, teacher, "entailment", root, "validation")
    assert ds["id"] == [pair for _, pair, *_ in SNLI_VE["train"]]
    assert ds["premise"] == [p for _, _, p, _, _ in SNLI_VE["train"]]
    assert ds["label"] == [label for *_, label in SNLI_VE["train"]]
    assert set(ds["target"]) <= {"yes", "no", "maybe"}
    assert [p["id"] for p in preds] == [pair for _, pair, *_ in SNLI_VE["dev"]] and "accuracy=" in output
