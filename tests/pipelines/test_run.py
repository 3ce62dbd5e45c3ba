"""`narvl-pipe run` end to end with the real stages on a tiny world, and the report stage."""
from __future__ import annotations

import json
import sys

import pytest
from PIL import Image

from pipelines.report import ReportConfig, run_report
from student.data import load_training_data  # noqa: E402


def test_report_needs_results_or_tasks(tmp_path):
    from distill.errors import UserError

    with pytest.raises(UserError, match="exactly one of results"):
        run_report(ReportConfig(), tmp_path)


# ------------------------------------------------------------------------------------------------ end to end
TINY_MODEL = {"arch": "tiny", "d_model": 32, "layers": 1, "heads": 2, "resnet_type": "resnet18", "resolution": 32}
TRAIN = {"batch_size": 8, "lr": 1e-3, "eval_limit": 4, "report_to": "none", "seed": 0}


def tiny_pipeline(student_steps: int = 2) -> dict:
    """The demo's stage graph on a tiny world: 24 train rows, 32 px images, a 1-layer d=32 OFA, a few steps."""
    student = {"task": "caption", "init": "${stages.teacher}", "max_steps": student_steps, **TRAIN}
    evaluate = {"task": "caption", "data": "${stages.shapes}", "split": "test", "batch_size": 8, "latency_limit": 2,
                "latency_batch_sizes": [1, 4]}
    return {"name": "tiny", "stages": [
        {"name": "shapes", "kind": "data",
         "config": {"n_train": 24, "n_val": 4, "n_test": 6, "size": 32, "seed": 0, "tokenizer_vocab_size": 300}},
        {"name": "teacher", "kind": "train-teacher",
         "config": {"task": "caption", "data": "${stages.shapes}", "max_steps": 3, "eval_num_beams": 1,
                    "save_every": 2, **TINY_MODEL, **TRAIN}},
        {"name": "distill", "kind": "distill",
         "config": {"task": "caption", "teacher": "${stages.teacher}", "data": "${stages.shapes}", "num_beams": 2,
                    "max_new_tokens": 8, "batch_size": 8, "shard_size": 16, "num_workers": 0, "progress": False}},
        {"name": "student-kd", "kind": "train-student", "config": {"data": "${stages.distill}", **student}},
        {"name": "student-raw", "kind": "train-student",
         "config": {"data": "${stages.shapes}", "target_column": "references", **student}},
        {"name": "eval-teacher-beam2", "kind": "evaluate",
         "config": {"model": "${stages.teacher}", "num_beams": 2, **evaluate}},
        {"name": "eval-student-kd", "kind": "evaluate", "config": {"model": "${stages.student-kd}", **evaluate}},
        {"name": "eval-student-raw", "kind": "evaluate", "config": {"model": "${stages.student-raw}", **evaluate}},
        {"name": "report", "kind": "report",
         "config": {"reference": "teacher-beam2",
                    "results": {"teacher-beam2": "${stages.eval-teacher-beam2}",
                                "student-kd": "${stages.eval-student-kd}",
                                "student-raw": "${stages.eval-student-raw}"}}},
    ]}


@pytest.mark.slow
def test_run_end_to_end_with_real_stages(tmp_path, monkeypatch, capsys, one_thread):
    import datasets
    import yaml

    from pipelines import hub
    from pipelines.cli import main
    from pipelines.cmd_run import run_demo
    from pipelines.stages import parse_pipeline, run_pipeline

    out = tmp_path / "run"
    first = run_pipeline(parse_pipeline(tiny_pipeline()), out, log=print)
    assert [o.status for o in first] == ["ran"] * 9
    report = json.loads((out / "report" / "report.json").read_text())
    assert sorted(p.name for p in out.iterdir() if not p.is_symlink() and p.is_dir()) == sorted(
        f"{o.name}-{json.loads((o.dir / 'stage_complete.json').read_text())['fingerprint']}" for o in first)
    assert [r["label"] for r in report["rows"]] == ["teacher-beam2", "student-kd", "student-raw"]
    assert all(r["num_samples"] == 6 and r["ms_per_sample"] > 0 for r in report["rows"])
    assert {r["model_type"] for r in report["rows"]} == {"ofa", "narvl"}
    # A finished trainer stage keeps its final model, not the checkpoints that only a resume needs.
    assert not (out / "teacher" / "checkpoints").exists() and (out / "teacher" / "config.json").is_file()

    # The distill artifact is a real distilled dataset: every train row, and push --dry-run serves the same rows.
    distilled = load_training_data(out / "distill")
    assert sorted(distilled["id"]) == sorted(datasets.load_from_disk(str(out / "shapes"))["train"]["id"])
    hub.push(out / "distill", "me/tiny", dry_run_dir=tmp_path / "upload")
    pushed = datasets.load_dataset(str(tmp_path / "upload"), cache_dir=str(tmp_path / "hf-cache"))["train"]
    assert pushed.remove_columns("image").to_list() == distilled.remove_columns("image").to_list()

    # Re-run through the CLI and the demo driver: everything cached; the demo copies the report and prints the table.
    yaml_file = tmp_path / "tiny.yaml"
    yaml_file.write_text(yaml.safe_dump(tiny_pipeline(), sort_keys=False))
    monkeypatch.setattr(sys, "argv", ["narvl-pipe", "run", str(yaml_file), "--out", str(out)])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code in (0, None)
    assert "done: all 9 stages cached, nothing ran" in capsys.readouterr().out
    assert run_demo(out, pipeline_file=yaml_file) == report
    printed = capsys.readouterr().out
    assert "all 9 stages cached, nothing ran (computing them took" in printed and "wall time 0.0s" not in printed
    assert "student-kd" in printed and "speed-up b4" in printed and "faster than teacher-beam2 at batch 4" in printed
    assert (out / "report.png").is_file() and (out / "report.md").is_file()

    # A student config change re-runs that student, its evaluation and the report only.
    third = {o.name: o.status for o in run_pipeline(parse_pipeline(tiny_pipeline(student_steps=3)), out, log=print)}
    ran = {name for name, status in third.items() if status != "skipped"}
    assert ran == {"student-kd", "student-raw", "eval-student-kd", "eval-student-raw", "report"}
    config = json.loads((out / "student-kd" / "stage_config.json").read_text())["config"]
    assert config["max_steps"] == 3 and config["data"] == str((out / "distill").resolve())
    assert json.loads((out / "student-kd" / "train_config.json").read_text())["final_step"] == 3


def test_packaged_demo_yaml_is_valid(tmp_path):
    """Every stage config of pipelines/demo.yaml matches its dataclass (planned, nothing run)."""
    import importlib.resources

    from pipelines.stages import load_pipeline, plan

    pipe = load_pipeline(str(importlib.resources.files("pipelines") / "demo.yaml"))
    planned = plan(pipe, tmp_path)
    assert [s.spec.kind for s in planned] == ["data", "train-teacher", "distill", "train-student", "train-student",
                                              "evaluate", "evaluate", "evaluate", "evaluate", "baseline", "report"]
    by = {s.spec.name: s for s in planned}
    assert by["student-kd"].config["data"] == str(by["distill"].dir)
    assert by["student-raw"].config["target_column"] == "references"
    assert by["student-kd"].config["init"] == by["student-raw"].config["init"] == str(by["teacher"].dir)
    assert list(by["report"].config["results"]) == ["baseline", "teacher-greedy", "teacher-beam5", "student-kd",
                                                    "student-raw"]


def test_run_settings_that_change_no_artifact_are_not_fingerprinted(tmp_path):
    """Trackers, workers, logging and progress bars re-run nothing; a learning rate or a beam size does."""
    import importlib.resources

    import yaml

    from pipelines.stages import parse_pipeline, plan

    doc = yaml.safe_load((importlib.resources.files("pipelines") / "demo.yaml").read_text())

    def fingerprints(**changes):
        stages = [dict(s, config={**s["config"], **changes.get(s["name"], {})}) for s in doc["stages"]]
        return {s.spec.name: s.fingerprint for s in plan(parse_pipeline({**doc, "stages": stages}), tmp_path)}

    base = fingerprints()
    trainer_noise = {"report_to": "tensorboard", "num_workers": 3, "log_every": 1, "keep_checkpoints": 7,
                     "project_name": "other", "find_unused_parameters": False}
    assert fingerprints(teacher=trainer_noise, **{"student-kd": trainer_noise}) == base
    assert fingerprints(distill={"num_workers": 0, "progress": False, "flush_every": 8, "overwrite": True}) == base
    changed = fingerprints(teacher={"lr": 3e-4})
    assert {name for name in base if changed[name] != base[name]} == set(base) - {"shapes", "baseline"}
    changed = fingerprints(distill={"num_beams": 4})
    assert changed["distill"] != base["distill"] and changed["teacher"] == base["teacher"]



def _packaged(name: str):
    import importlib.resources

    from pipelines.stages import load_pipeline

    return load_pipeline(str(importlib.resources.files("pipelines") / name))


def test_packaged_four_task_demo_yaml_is_valid(tmp_path):
    """pipelines/demo_all.yaml plans against the stage dataclasses: one multi-task OFA fine-tuned into one AR teacher
    per task; each task's distill, students and teacher evaluation use that teacher; KD and raw students for caption
    and VQA, label-trained students for grounding and entailment, a baseline per task; every student gets the same
    steps, at its teacher's fine-tuning rate."""
    from pipelines.stages import plan

    by = {s.spec.name: s for s in plan(_packaged("demo_all.yaml"), tmp_path)}
    assert by["pretrain"].config["tasks"] == ["caption", "vqa", "grounding", "entailment"]
    assert by["shapes"].fingerprint == {s.spec.name: s for s in plan(_packaged("demo.yaml"), tmp_path)}["shapes"].fingerprint
    tasks = ["caption", "vqa", "grounding", "entailment"]
    teachers = {t: by[f"teacher-{t}"] for t in tasks}
    assert all(s.config["init"] == str(by["pretrain"].dir) and s.config["task"] == t for t, s in teachers.items())
    students = [n for n, s in by.items() if s.spec.kind == "train-student"]
    assert len(students) == 6
    for n in students:
        task = by[n].config["task"]
        assert by[n].config["init"] == str(teachers[task].dir), n
        assert by[n].config["lr"] == teachers[task].config["lr"], n
    assert len({by[n].config["max_steps"] for n in students}) == 1
    assert by["distill-caption"].config["teacher"] == str(teachers["caption"].dir)
    assert by["distill-vqa"].config["teacher"] == str(teachers["vqa"].dir)
    assert by["student-vqa-kd"].config["data"] == str(by["distill-vqa"].dir)
    assert by["student-grounding"].config["target_column"] == "references"
    report = by["report"].config["tasks"]
    assert list(report) == tasks
    assert all(by[f"eval-teacher-{t}"].config["model"] == str(teachers[t].dir) for t in tasks)
    assert all(report[t]["teacher"] == str(by[f"eval-teacher-{t}"].dir) for t in tasks)
    assert all(report[t]["baseline"] == str(by[f"baseline-{t}"].dir) for t in tasks)
    assert set(report["vqa"]) == {"baseline", "teacher", "student-kd", "student-raw"}
    assert set(report["grounding"]) == {"baseline", "teacher", "student"}


def tiny_four_task_pipeline() -> dict:
    """pipelines/demo_all.yaml with tiny sizes: 24 train rows, 32 px, a 1-layer d=32 OFA (built once, fine-tuned per
    task), 2 steps everywhere."""
    import yaml

    import importlib.resources

    pipe = yaml.safe_load((importlib.resources.files("pipelines") / "demo_all.yaml").read_text())
    sizes = {
        "data": {"n_train": 24, "n_val": 4, "n_test": 6, "size": 32, "tokenizer_vocab_size": 300},
        "train-teacher": {**TINY_MODEL, **TRAIN, "max_steps": 2, "save_every": 0},
        "distill": {"num_beams": 2, "batch_size": 8, "shard_size": 16, "num_workers": 0, "progress": False},
        "train-student": {**TRAIN, "max_steps": 2, "save_every": 0},
        "evaluate": {"batch_size": 8, "latency_limit": 2, "latency_batch_sizes": [1, 4]},
    }
    for stage in pipe["stages"]:
        stage["config"].update(sizes.get(stage["kind"], {}))
        if stage["kind"] == "train-teacher" and stage["config"].get("init"):  # a fine-tune keeps its model
            for key in TINY_MODEL:
                stage["config"].pop(key)
        if stage["name"] == "distill-caption":
            stage["config"]["max_new_tokens"] = 8
    return pipe


@pytest.mark.slow
def test_four_task_demo_end_to_end(tmp_path, capsys, one_thread):
    """The four-task demo graph runs end to end with `--jobs 2`: one report with a group per task, each with its
    baseline row (no latency), teacher and students, claim checks per task and three examples per task."""
    import yaml

    from pipelines.cmd_run import run_demo

    yaml_file = tmp_path / "tiny_all.yaml"
    yaml_file.write_text(yaml.safe_dump(tiny_four_task_pipeline(), sort_keys=False))
    # --jobs 2, as `narvl-pipe demo` runs it: the built-in kinds in forkserver children (found again by name)
    report = run_demo(tmp_path / "run", pipeline_file=yaml_file, jobs=2)
    assert (tmp_path / "run" / "logs" / "student-caption-kd.log").is_file()
    assert report["tasks"] == ["caption", "vqa", "grounding", "entailment"]
    labels = [(r["group"], r["label"]) for r in report["rows"]]
    assert labels == [("caption", "baseline"), ("caption", "teacher"), ("caption", "student-kd"),
                      ("caption", "student-raw"), ("vqa", "baseline"), ("vqa", "teacher"), ("vqa", "student-kd"),
                      ("vqa", "student-raw"), ("grounding", "baseline"), ("grounding", "teacher"),
                      ("grounding", "student"), ("entailment", "baseline"), ("entailment", "teacher"),
                      ("entailment", "student")]
    rows = {key: r for key, r in zip(labels, report["rows"])}
    assert {r["metric"] for (t, _), r in rows.items() if t == "grounding"} == {"acc@0.5"}
    assert rows["caption", "baseline"]["ms_per_sample"] is None and rows["caption", "baseline"]["speedups"] == {}
    assert all(r["ms_per_sample"] > 0 and r["latency_threads"] == 1 and r["latency_calls"] == 5  # MIN_CALLS
               and set(r["latency"]) == {"1", "4"} and r["interval"]["low"] <= r["score"] <= r["interval"]["high"]
               for (_, label), r in rows.items() if label != "baseline")
    assert rows["vqa", "teacher"]["decoding"] == "AR beam 5 over answer trie"
    assert rows["grounding", "teacher"]["decoding"] == "AR beam 5, 4 bins"
    assert rows["entailment", "teacher"]["decoding"] == "AR candidate scoring"
    assert [c["task"] for c in report["checks"]] == ["caption"] * 4 + ["vqa"] * 4 + ["grounding"] * 3 + ["entailment"] * 3
    test_ids = [json.loads(line)["id"] for line in (tmp_path / "run" / "eval-teacher-vqa" / "predictions.jsonl")
                .read_text().splitlines()]
    for task, examples in report["examples"].items():
        assert [e["id"] for e in examples] == test_ids[:3]
        assert all(e["reference"] and set(e["outputs"]) == {label for t, label in labels if t == task} - {"baseline"}
                   for e in examples)
    printed = capsys.readouterr().out
    assert "Example predictions" in printed and "grounding  shapes-0-test-000000" in printed
    assert "batch 1/4: median over 5 calls, 1 CPU thread(s)" in printed and "teacher" in printed
    assert (tmp_path / "run" / "report.png").is_file()
