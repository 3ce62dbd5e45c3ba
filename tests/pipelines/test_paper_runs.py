"""Each `pipelines/paper/*.yaml` run end to end, as a researcher runs it (`narvl-pipe run PIPELINE --set ...`), at
toy scale: the teacher and student inits are OFA-Sys layout folders (no preprocessor or processor config), the data
are in OFA's own TSV layouts or a Karpathy JSON (`paper_data`), and the training is shortened on the command line
(`--override STAGE.FIELD=VALUE`), never in an edited copy of the YAML. Every stage must produce its artifact, the AR
rows of the report included."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the suite runs with --import-mode=importlib
import paper_data  # noqa: E402

PAPER = Path(__file__).resolve().parents[2] / "pipelines" / "paper"
TRAIN = ["max_steps=2", "batch_size=2", "eval_limit=2", "eval_batch_size=2", "report_to=none", "resolution=64"]
"""Every trainer stage: two steps of two rows, two rows scored per evaluation, 64 px (an OFA-Sys init has no image
processor: the student would otherwise train at the task's 480/512 px)."""
EVAL = ["limit=2", "batch_size=2", "latency_limit=1", "latency_batch_sizes=[1]"]


def _run(name: str, out: Path, sets: dict[str, Path | str], overrides: list[str]) -> list[dict]:
    """`narvl-pipe run pipelines/paper/NAME.yaml --out OUT --set ... --override ...`; returns the stage records."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    args = ["run", str(PAPER / f"{name}.yaml"), "--out", str(out)]
    for var, value in sets.items():
        args += ["--set", f"{var}={value}"]
    for item in overrides:
        args += ["--override", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    stages = []
    for link in sorted(p for p in out.iterdir() if p.is_symlink()):
        folder = link.resolve()
        assert (folder / "stage_complete.json").is_file(), link.name
        stages.append({"name": link.name, "dir": folder, **json.loads((folder / "stage_config.json").read_text())})
    return stages


def _overrides(stage: str, items: list[str]) -> list[str]:
    return [f"{stage}.{item}" for item in items]


def _check(stages: list[dict], ar_rows: list[str]) -> dict:
    """Each stage wrote its artifact; the report has the AR rows and a student row; returns report.json."""
    for s in stages:
        kind, folder = s["kind"], s["dir"]
        if kind in ("train-teacher", "train-student"):
            assert (folder / "model.safetensors").is_file() and (folder / "train_config.json").is_file(), s["name"]
            assert (folder / "preprocessor_config.json").is_file()
        elif kind == "distill":
            manifest = json.loads((folder / "manifest.json").read_text())
            assert manifest["status"] == "complete" and list((folder / "data").glob("*.parquet")), s["name"]
        elif kind == "evaluate":
            metrics = json.loads((folder / "metrics.json").read_text())
            assert metrics["num_samples"] == 2 and metrics["ms_per_sample"] > 0, s["name"]
        elif kind == "report":
            report = json.loads((folder / "report.json").read_text())
    labels = [row["label"] for row in report["rows"]]
    assert all(label in labels for label in ar_rows + ["student"]), labels
    assert all(row.get("score") is not None for row in report["rows"])
    return report


def _selected(stages: list[dict], name: str) -> dict:
    """A trainer stage run with `select_best`: the folder's model is the best evaluation, `last/` the last step's."""
    folder = next(s["dir"] for s in stages if s["name"] == name)
    record = json.loads((folder / "train_config.json").read_text())
    last = json.loads((folder / "last" / "train_config.json").read_text())
    assert (folder / "last" / "model.safetensors").is_file()
    assert record["selected"]["last"]["folder"] == "last" and last["selected"]["model"] == "the last step"
    assert record["selected"]["step"] in (1, 2) and last["final_step"] == 2
    return record


@pytest.fixture(scope="module")
def inits(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inits")
    return {"teacher": paper_data.ofa_sys_folder(root / "ofa-teacher", seed=1),
            "student": paper_data.ofa_sys_folder(root / "ofa-base", seed=2)}


@pytest.mark.parametrize("layout", ["karpathy", "ofa-tsv"])
def test_caption_pipeline(tmp_path, inits, layout):
    """caption.yaml: the AR row (OFA-base fine-tuned with OFA's stage-1 recipe), the KD teacher's captions, the
    student; the same number of updates per epoch from Karpathy's per-image JSON and OFA's per-caption TSV."""
    if layout == "karpathy":
        data, split = paper_data.karpathy(tmp_path / "coco"), "train+restval"
    else:
        data, split = paper_data.caption_tsvs(tmp_path / "caption_data"), "train"
    sets = {"COCO_ROOT": data, "TRAIN_SPLIT": split, "AR_INIT": inits["student"], "TEACHER": inits["teacher"],
            "STUDENT_INIT": inits["student"]}
    overrides = (_overrides("ar", TRAIN + ["eval_every=1"]) + _overrides("student", TRAIN)
                 + ["distill.num_workers=0", "distill.max_new_tokens=6"]
                 + [o for s in ("eval-ar", "eval-teacher", "eval-student") for o in _overrides(s, EVAL)])
    stages = _run("caption", tmp_path / "run", sets, overrides)
    assert [s["name"] for s in stages] == sorted(["ar", "distill", "student", "eval-ar", "eval-teacher",
                                                  "eval-student", "report"])
    _check(stages, ["ar", "teacher"])
    ar = _selected(stages, "ar")
    assert ar["selected"]["metric"] == "cider" and ar["drop_worst_ratio"] == 0.2  # OFA's caption criterion
    student = json.loads(next(s["dir"] for s in stages if s["name"] == "student").joinpath(
        "train_config.json").read_text())
    assert student["epoch"]["samples"] == 8  # 4 training images x 2 captions, whichever layout holds them
    assert "re-encoded" in student["kd_targets"]


def test_vqa_pipeline(tmp_path, inits):
    """vqa.yaml: distill over OFA's answer list, the AR teacher evaluated over the same list (it needs one), the
    student evaluated each epoch and kept at its best VQA accuracy."""
    files = paper_data.vqa_tsvs(tmp_path / "vqa_data")
    sets = {"VQA_TRAIN": files["train"], "VQA_EVAL": files["val"], "VQA_ANSWERS": files["answers"],
            "VQA_TEACHER": inits["teacher"], "STUDENT_INIT": inits["student"]}
    overrides = (_overrides("student", [t for t in TRAIN if not t.startswith("max_steps")] + ["max_steps=3"])
                 + ["distill.num_workers=0"]
                 + [o for s in ("eval-teacher", "eval-student") for o in _overrides(s, EVAL)])
    stages = _run("vqa", tmp_path / "run", sets, overrides)
    report = _check(stages, ["teacher"])
    teacher = next(r for r in report["rows"] if r["label"] == "teacher")
    assert "answer trie" in teacher["decoding"]
    folder = next(s["dir"] for s in stages if s["name"] == "student")
    record = json.loads((folder / "train_config.json").read_text())
    assert record["selected"]["metric"] == "vqa_accuracy" and record["selected"]["step"] in (2, 3)
    assert (folder / "last" / "model.safetensors").is_file()


def test_refcoco_pipeline(tmp_path, inits):
    """refcoco.yaml: the student on the ground-truth boxes, evaluated every `eval_every` updates and kept at its
    best acc@0.5; the AR row from an OFA-Sys folder."""
    files = paper_data.refcoco_tsvs(tmp_path / "refcoco_data")
    sets = {"REFCOCO_TRAIN": files["train"], "REFCOCO_VAL": files["val"], "REFCOCO_TEACHER": inits["teacher"],
            "STUDENT_INIT": inits["student"]}
    overrides = (_overrides("student", TRAIN + ["eval_every=1"])
                 + [o for s in ("eval-teacher", "eval-student") for o in _overrides(s, EVAL)])
    stages = _run("refcoco", tmp_path / "run", sets, overrides)
    _check(stages, ["teacher"])
    assert _selected(stages, "student")["selected"]["metric"] == "acc@0.5"


def test_snli_ve_pipeline(tmp_path, inits):
    """snli_ve.yaml: the student on the labels, kept at its best dev accuracy; the AR row from an OFA-Sys folder."""
    files = paper_data.snli_ve_tsvs(tmp_path / "snli_ve_data")
    sets = {"SNLI_VE_TRAIN": files["train"], "SNLI_VE_DEV": files["dev"], "SNLI_VE_TEACHER": inits["teacher"],
            "STUDENT_INIT": inits["student"]}
    overrides = (_overrides("student", TRAIN + ["eval_every=1"])
                 + [o for s in ("eval-teacher", "eval-student") for o in _overrides(s, EVAL)])
    stages = _run("snli_ve", tmp_path / "run", sets, overrides)
    _check(stages, ["teacher"])
    assert _selected(stages, "student")["selected"]["metric"] == "accuracy"
