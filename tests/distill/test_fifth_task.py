"""A fifth task, defined in this file alone, goes through the real `distill` -> `train-student` -> `evaluate`.

`ColourTask` asks the colour of the one shape in an image (" what colour is the square?" -> "red"). It declares its
columns, prompt, reference, decoding and metric as a `Task` subclass and is registered with
`distill.tasks.register_task`; nothing else in the code base knows it. Each CLI command runs in-process (typer's
CliRunner), so it sees the registration.
"""
from __future__ import annotations

import io
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import datasets
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "student"))
sys.path.insert(0, str(Path(__file__).resolve().parent / "teachers"))

from distill.tasks import TASKS, canonical_columns, get_task, register_task  # noqa: E402
from distill.tasks.base import Task, ids_to_text  # noqa: E402
from student.data import load_training_data  # noqa: E402

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


@dataclass(frozen=True)
class ColourTask(Task):
    """The colour of the shape named by `shape_name`; target: the colour word; metric: exact-match accuracy."""

    name: str = "colour"
    input_columns: tuple[str, ...] = ("id", "image", "shape_name", "colour")
    resolution: int = 32
    num_queries: int = 4
    label_smoothing: float = 0.0
    text_columns: ClassVar[tuple[str, ...]] = ("shape_name",)
    reference_columns: ClassVar[tuple[str, ...]] = ("colour",)

    def prompt(self, row):
        return f" what colour is the {row['shape_name'].strip().lower()}?"

    def reference(self, row, rng=None, tokenizer=None) -> str:
        return str(row["colour"]).strip().lower()

    def decode(self, text_or_ids, row, tokenizer=None) -> str:
        return " ".join(ids_to_text(text_or_ids, tokenizer).split())

    def evaluate(self, predictions: Sequence[str], rows) -> dict[str, float]:
        return {"colour_accuracy": 100.0 * sum(p == self.reference(r) for p, r in zip(predictions, rows))
                / max(len(rows), 1)}

    def metric_implementation(self, rows=()) -> str:
        return "exact match (test task)"


@pytest.fixture
def colour_task():
    register_task(ColourTask)
    yield TASKS["colour"]
    TASKS.pop("colour")  # the registry is process-wide: leave it as the other tests expect it


def _png(colour: str, seed: int) -> bytes:
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    img = Image.new("RGB", (32, 32), (245, 245, 245))
    x, y = rng.randint(2, 12), rng.randint(2, 12)
    ImageDraw.Draw(img).rectangle([x, y, x + 16, y + 16], fill=COLOURS[colour])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _world(root: Path) -> Path:
    feats = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(),
                               "shape_name": datasets.Value("string"), "colour": datasets.Value("string")})

    def split(n: int, offset: int):
        names = list(COLOURS)
        return datasets.Dataset.from_list(
            [{"id": f"c{offset + i}", "image": {"bytes": _png(names[i % 3], offset + i), "path": None},
              "shape_name": "square", "colour": names[i % 3]} for i in range(n)], features=feats)

    out = root / "colours"
    datasets.DatasetDict({"train": split(12, 0), "validation": split(6, 100)}).save_to_disk(str(out))
    return out


def test_registered_task_joins_the_schema(colour_task):
    assert get_task("colour").prompt({"shape_name": "Square"}) == " what colour is the square?"
    cols = canonical_columns()
    assert cols[:2] == ("id", "image") and cols[-2:] == ("shape_name", "colour")
    with pytest.raises(TypeError):
        register_task(dict)


def test_fifth_task_distils_trains_and_evaluates(colour_task, tmp_path):
    from distill_helpers import make_teacher
    from student_helpers import cli

    world = _world(tmp_path)
    teacher = make_teacher(tmp_path / "teacher", resolution=32)
    distilled = tmp_path / "kd"
    cli("distill", "--task", "colour", "--teacher", teacher, "--data", world, "--out", distilled,
        "--num-workers", "0", "--batch-size", "4", "--num-beams", "2", "--max-new-tokens", "4")
    ds = load_training_data(distilled)
    assert len(ds) == 12 and set(ds["task"]) == {"colour"}
    assert ds[0]["prompt"] == " what colour is the square?" and ds[0]["shape_name"] == "square"
    assert ds["colour"] == [["red", "blue", "green"][i % 3] for i in range(12)]  # the reference carried over
    assert all(r["target_ids"][-1] == 2 and r["target_len"] == len(r["target_ids"]) for r in ds)
    manifest = json.loads((distilled / "manifest.json").read_text())
    assert manifest["task"] == "colour" and manifest["metric_implementation"] == "exact match (test task)"
    assert manifest["teacher_identity"]["family"] == "ofa"

    student = tmp_path / "student"
    cli("train-student", "--task", "colour", "--data", distilled, "--init", teacher, "--out", student,
        "--max-steps", "2", "--batch-size", "4", "--lr", "1e-3", "--eval-data", world, "--eval-limit", "3",
        "--report-to", "none")
    record = json.loads((student / "train_config.json").read_text())
    assert record["task"] == "colour" and record["num_queries"] == ColourTask.num_queries
    assert "colour_accuracy" in record["eval"]

    preds = tmp_path / "preds.jsonl"
    res = cli("evaluate", "--model", student, "--task", "colour", "--data", world, "--split", "validation",
              "--out", preds)
    assert "colour_accuracy=" in res.output and "exact match (test task)" in res.output
    assert "(no interval: the task gives no per-row scores)" in res.output  # it evaluates all the same
    lines = [json.loads(ln) for ln in preds.read_text().splitlines()]
    assert [ln["id"] for ln in lines] == [f"c{100 + i}" for i in range(6)]


def test_fifth_task_predicts_exports_and_serves(colour_task, tmp_path):
    """The registered task through `predict`, `export` (ONNX) and `serve` (a real HTTP request): the same answer
    for the same image everywhere, its own text field (`shape_name`) taken by name; no other code knows it."""
    import base64

    import httpx
    from distill_helpers import make_teacher
    from student_helpers import cli, make_student

    from pipelines.serve import background_server, create_app
    from student.predictor import Predictor

    world = _world(tmp_path)
    teacher = make_teacher(tmp_path / "teacher", resolution=32)
    student = make_student(teacher, tmp_path / "student", task="colour", num_queries=4, weight_std=0.3)
    onnx_dir = tmp_path / "onnx"
    assert "exported" in cli("export", "--model", student, "--out", onnx_dir).output
    rows = list(datasets.load_from_disk(str(world))["validation"])[:3]
    for i, r in enumerate(rows):
        r["image"].save(tmp_path / f"c{i}.png")

    answers = {}
    for name, model in (("torch", student), ("onnx", onnx_dir), ("teacher", teacher)):
        got = []
        for i, r in enumerate(rows):
            args = ["--model", model, "--image", tmp_path / f"c{i}.png", "--text", r["shape_name"]]
            got.append(cli("predict", "--task", "colour", *args).stdout.strip())
        answers[name] = got
        with pytest.raises(AssertionError) as failed:
            cli("predict", "--task", "colour", "--model", model, "--image", tmp_path / "c0.png")
        assert "needs the text field 'shape_name'" in str(failed.value.__cause__)
    assert answers["torch"] == answers["onnx"]

    for name, model in (("onnx", onnx_dir), ("teacher", teacher)):
        with background_server(create_app(Predictor.from_pretrained(model, task="colour", device="cpu"))) as url:
            served = [httpx.post(url + "/predict", timeout=60, json={
                "image": base64.b64encode((tmp_path / f"c{i}.png").read_bytes()).decode(),
                "shape_name": r["shape_name"]}) for i, r in enumerate(rows)]
            wrong = httpx.post(url + "/predict", json={"image": "", "question": "what?"}, timeout=60)
        assert [s.status_code for s in served] == [200, 200, 200]
        assert [s.json()["prediction"] for s in served] == answers[name]
        assert wrong.status_code == 400


def test_fifth_task_through_a_transformers_teacher(colour_task, tmp_path):
    """A GIT teacher distils the registered task (prompted with the task's own prompt) and is evaluated as any
    model is: its metric and ms/sample, the same predictions as `predict`."""
    from student_helpers import cli
    from tiny_hf import build_git

    world = _world(tmp_path)
    git = build_git(tmp_path / "git")
    distilled = tmp_path / "kd"
    cli("distill", "--task", "colour", "--teacher", git, "--data", world, "--out", distilled, "--num-workers", "0",
        "--batch-size", "4", "--max-new-tokens", "4")
    ds = load_training_data(distilled)
    assert len(ds) == 12 and set(ds["teacher_prompt"]) == {"what colour is the square?"}
    preds = tmp_path / "git.jsonl"
    res = cli("evaluate", "--model", git, "--task", "colour", "--data", world, "--split", "validation",
              "--limit", "3", "--out", preds)
    assert "colour git (AR greedy)" in res.output and "colour_accuracy=" in res.output and "ms/sample" in res.output
    lines = [json.loads(ln) for ln in preds.read_text().splitlines()]
    rows = list(datasets.load_from_disk(str(world))["validation"])[:3]
    for line, r in zip(lines, rows):
        r["image"].save(tmp_path / "img.png")
        out = cli("predict", "--task", "colour", "--model", git, "--image", tmp_path / "img.png",
                  "--text", r["shape_name"]).stdout.strip()
        assert out == line["prediction"] and line["shape_name"] == "square" and line["colour"] == r["colour"]
