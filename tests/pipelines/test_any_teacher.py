"""A transformers teacher that distils is a model like any other: tiny GIT and Florence-2 folders (random weights,
built offline) go through `distill` -> `evaluate` (metric + ms/sample) -> `predict` -> `serve` (real HTTP) with the
same prediction for the same row on every path, and `narvl-pipe run` makes the report's teacher row from one."""
from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import datasets
import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "student"))  # shared builders (--import-mode=importlib)
sys.path.insert(0, str(Path(__file__).parents[1] / "distill" / "teachers"))
import student_helpers as h  # noqa: E402
import tiny_hf  # noqa: E402

from pipelines.serve import background_server, create_app  # noqa: E402
from pipelines.stages import parse_pipeline, run_pipeline  # noqa: E402
from student.data import load_training_data  # noqa: E402
from student.predictor import Predictor  # noqa: E402

pytestmark = pytest.mark.slow
N = 4
BUILDERS = {"git": tiny_hf.build_git, "florence2": tiny_hf.build_florence2}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("any-teacher")
    world = h.make_world(root, n_train=N, n_val=N)
    images = []
    for i, row in enumerate(datasets.load_from_disk(str(world))["train"]):
        images.append(root / f"img{i}.png")
        row["image"].save(images[-1])
    return root, world, images


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_distill_evaluate_predict_and_serve_agree(world, family):
    root, data, images = world
    teacher = BUILDERS[family](root / family)
    out = root / f"kd-{family}"
    # batch 1 everywhere: the paths then run the very same batches, so any difference is a seam defect
    h.cli("distill", "--task", "caption", "--teacher", teacher, "--data", data, "--out", out, "--batch-size", "1",
          "--num-workers", "0")
    distilled = {r["id"]: r["target"] for r in load_training_data(out)}

    preds = root / f"{family}.jsonl"
    res = h.cli("evaluate", "--model", teacher, "--task", "caption", "--data", data, "--split", "train",
                "--batch-size", "1", "--out", preds, "--json", root / f"{family}.json")
    assert f"caption {family} (AR beam 5)" in res.output and "cider=" in res.output
    record = json.loads((root / f"{family}.json").read_text())
    assert record["kind"] == family and record["ms_per_sample"] > 0 and record["num_samples"] == N
    lines = [json.loads(x) for x in preds.read_text().splitlines()]
    assert {x["id"]: x["output"] for x in lines} == distilled  # evaluate decodes as distill did

    predicted = [h.cli("predict", "--model", teacher, "--task", "caption", "--image", image).stdout.strip()
                 for image in images]
    assert predicted == [x["prediction"] for x in lines]

    with background_server(create_app(Predictor.from_pretrained(teacher, task="caption", device="cpu"),
                                      max_batch_size=1)) as url:
        health = httpx.get(url + "/health").json()
        served = [httpx.post(url + "/predict", timeout=60, json={"image": base64.b64encode(p.read_bytes()).decode()})
                  for p in images]
    assert health["kind"] == family
    assert [s.json()["prediction"] for s in served] == predicted


def test_run_makes_the_teacher_row_of_the_report(world):
    """A pipeline whose teacher is a GIT folder: the evaluate stage times and scores it, the report shows its row
    with its family and decoding, and the speed-up of a student is computed against it."""
    root, data, _ = world
    teacher = tiny_hf.build_git(root / "git-run")
    student = h.make_student(h.make_teacher(data, root / "ofa", "caption", 1), root / "student")
    common = {"task": "caption", "data": str(data), "split": "validation", "batch_size": N, "latency_batch_sizes": [1],
              "latency_limit": 2}
    pipeline = {"name": "any-teacher", "stages": [
        {"name": "eval-teacher", "kind": "evaluate", "config": {"model": str(teacher), **common}},
        {"name": "eval-student", "kind": "evaluate", "config": {"model": str(student), **common}},
        {"name": "report", "kind": "report", "config": {
            "results": {"teacher": "${stages.eval-teacher}", "student": "${stages.eval-student}"},
            "reference": "teacher"}},
    ]}
    out = root / "run"
    assert [o.status for o in run_pipeline(parse_pipeline(pipeline), out, log=print)] == ["ran"] * 3
    report = json.loads((out / "report" / "report.json").read_text())
    rows = {r["label"]: r for r in report["rows"]}
    assert rows["teacher"]["model_type"] == "git" and rows["teacher"]["decoding"] == "AR beam 5"
    assert rows["teacher"]["ms_per_sample"] > 0 and rows["student"]["model_type"] == "narvl"
    assert rows["student"]["speedups"]["1"]["estimate"] > 0  # at the same batch size and statistic
