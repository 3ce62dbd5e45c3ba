"""`narvl-pipe export` and the onnxruntime backend, checked against the PyTorch student: logits within 1e-4 and the
very same decoded predictions for all four tasks at batch 1 and 8, the graph's dynamic dimensions, and the refusals."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import datasets
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # the suite runs with --import-mode=importlib
import student_helpers as h  # noqa: E402

from distill.errors import UserError  # noqa: E402
from distill.loader import load_model  # noqa: E402
from student.predictor import Predictor  # noqa: E402

TASKS = ("caption", "vqa", "grounding", "entailment")


def retargeted(folder: Path, task: str, dest: Path) -> Path:
    """A copy of a student (or export) folder that records `task`: one graph exercises every task's decoding rule
    (a student answers only the task it records)."""
    if not dest.exists():
        shutil.copytree(folder, dest)
        config = json.loads((dest / "config.json").read_text())
        (dest / "config.json").write_text(json.dumps({**config, "task": task}))
    return dest


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    world = h.make_world(root, n_train=8, n_val=8)
    teacher = h.make_teacher(world, root / "teacher", "caption", 1)
    student = h.make_student(teacher, root / "student", "caption", num_queries=8, weight_std=0.3)
    out = h.cli("export", "--model", student, "--out", root / "onnx")
    assert "max |logit diff|" in out.stdout
    rows = [dict(r) for r in datasets.load_from_disk(str(world))["validation"]]
    return student, root / "onnx", teacher, rows


def test_export_folder_and_graph(exported):
    import onnx

    from distill.ofa.tokenization_ofa import load_ofa_tokenizer
    from student.export import read_spec
    from student.modeling_narvl import NARVLModel

    student, onnx_dir, _, _ = exported
    cfg = NARVLModel.config_class.from_pretrained(str(student))
    onnx.checker.check_model(str(onnx_dir / "model.onnx"), full_check=True)
    graph = onnx.load(str(onnx_dir / "model.onnx")).graph

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    inputs = {v.name: dims(v) for v in graph.input}
    outputs = {v.name: dims(v) for v in graph.output}
    res = json.loads((student / "preprocessor_config.json").read_text())["size"]
    # Batch and prompt length stay symbolic; the image side and the N x (V + 1) frames are fixed.
    assert inputs == {"input_ids": ["batch", "prompt_length"], "patch_images": ["batch", 3, res, res]}
    assert outputs == {"logits": ["batch", cfg.num_queries, cfg.vocab_size + 1]}

    spec = read_spec(onnx_dir)
    assert (spec.task, spec.num_queries, spec.blank_id, spec.eos_id, spec.pad_id, spec.resolution) == (
        "caption", 8, cfg.vocab_size, cfg.eos_token_id, cfg.pad_token_id, res)
    assert spec.max_abs_diff < 1e-4 and "CTC greedy" in spec.decoding
    assert json.loads((onnx_dir / "export.json").read_text())["outputs"]["logits"]["shape"][1] == 8
    assert load_ofa_tokenizer(onnx_dir).get_vocab() == load_ofa_tokenizer(student).get_vocab()


@pytest.mark.parametrize("task", TASKS)
def test_onnx_matches_torch(exported, task, tmp_path):
    student, onnx_dir, _, rows = exported
    eager = Predictor.from_pretrained(retargeted(student, task, tmp_path / "s"), task=task, device="cpu")
    ort = Predictor.from_pretrained(retargeted(onnx_dir, task, tmp_path / "o"), task=task)
    assert (eager.backend, ort.backend) == ("torch", "onnx")
    for batch in (rows[:1], rows[:8]):  # batch 8: prompts of several lengths, so right padding is in play
        want, got = eager.logits(batch), ort.logits(batch)
        assert got.shape == want.shape == (len(batch), 8, eager.model.config.vocab_size + 1)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
        assert ort.predict_rows(batch) == eager.predict_rows(batch)
    outputs = [p.output for p in eager.predict_rows(rows[:8])]
    assert len(set(outputs)) > 1, outputs  # the comparison is not between constant outputs


def test_onnx_beam_search_and_cli_predict(exported, tmp_path):
    student, onnx_dir, _, rows = exported
    eager = Predictor(load_model(student, device="cpu"), "caption", num_beams=3)
    ort = Predictor.from_pretrained(onnx_dir)
    assert ort.task.name == "caption"  # the student's own task by default
    assert Predictor(ort.model, "caption", num_beams=3).predict_rows(rows[:8]) == eager.predict_rows(rows[:8])

    image = tmp_path / "img.png"
    rows[3]["image"].save(image)
    for task, text in (("vqa", "what color is the triangle"), ("caption", None)):
        args = ["--task", task, "--image", image] + (["--text", text] if text else [])
        a = h.cli("predict", "--model", retargeted(onnx_dir, task, tmp_path / f"o-{task}"), *args).stdout
        b = h.cli("predict", "--model", retargeted(student, task, tmp_path / f"s-{task}"), *args).stdout
        assert a == b and a.strip()


def test_export_refusals(exported, tmp_path):
    from pipelines.cli import app
    from student.export import export_onnx
    from typer.testing import CliRunner

    student, onnx_dir, teacher, _ = exported
    with pytest.raises(UserError, match="model_type 'ofa': only a NARVL student exports"):
        export_onnx(teacher, tmp_path / "t")
    with pytest.raises(UserError, match="format 'tflite' is not supported"):
        export_onnx(student, tmp_path / "f", format="tflite")
    with pytest.raises(UserError, match="already an ONNX export"):
        export_onnx(onnx_dir, tmp_path / "again")
    with pytest.raises(UserError, match="must not be the student folder"):
        export_onnx(student, student)
    with pytest.raises(UserError, match="opset 11 is too old"):
        export_onnx(student, tmp_path / "o", opset=11)
    res = CliRunner().invoke(app, ["export", "--model", str(student), "--out", str(tmp_path / "o"), "--opset", "11"])
    assert res.exit_code == 2 and "--opset" in res.output
    broken = tmp_path / "broken"
    shutil.copytree(onnx_dir, broken)
    (broken / "model.onnx").unlink()
    with pytest.raises(UserError, match="graph file model.onnx named in export.json is missing"):
        load_model(broken)
