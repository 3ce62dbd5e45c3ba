"""`narvl-pipe run` end to end with the real stages on a tiny world, and the report stage."""
from __future__ import annotations

import json
import sys

import pytest
from PIL import Image

from pipelines.report import ReportConfig, format_table, run_report
from student.data import load_training_data  # noqa: E402


def _metrics(tmp_path, label, score, ms, model_type, task="caption", metric="cider", predictions=()):
    folder = tmp_path / f"{task}-{label}"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({
        "task": task, "metric": metric, "score": score, "ms_per_sample": ms, "num_samples": 10,
        "model": f"/runs/{label}", "model_type": model_type, "decoding": "x", "metrics": {metric: score},
        "latency_batch_size": 1, "latency_threads": 2, "latency_statistic": "median", "latency_calls": 10,
    }))
    (folder / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))
    return str(folder)


def test_report_table_speedups_claims_and_files(tmp_path):
    results = {
        "teacher-greedy": _metrics(tmp_path, "teacher-greedy", 80.0, 20.0, "ofa"),
        "teacher-beam5": _metrics(tmp_path, "teacher-beam5", 100.0, 60.0, "ofa"),
        "student-kd": _metrics(tmp_path, "student-kd", 95.0, 5.0, "narvl"),
        "student-raw": _metrics(tmp_path, "student-raw", 40.0, 5.0, "narvl"),
    }
    out = tmp_path / "report"
    out.mkdir()
    report = run_report(ReportConfig(results=results, title="t", note="the teacher is tiny"), out)
    speedups = {r["label"]: r["speedup"] for r in report["rows"]}
    assert speedups == pytest.approx({"teacher-greedy": 3.0, "teacher-beam5": 1.0, "student-kd": 12.0, "student-raw": 12.0})
    assert [c["passed"] for c in report["checks"]] == [True, True, True]  # 0.95x >= 0.9, 12x faster, 95 > 40

    lines = format_table(report).splitlines()
    assert lines[0].split()[:4] == ["system", "decoding", "CIDEr", "ms/sample"]
    assert lines[2].split() == ["teacher-greedy", "x", "80.0", "20.0", "3.0x"]
    assert json.loads((out / "report.json").read_text())["rows"][2]["label"] == "student-kd"
    md = (out / "report.md").read_text()
    assert "| student-kd | x | 95.0 | 5.0 | 12.0x |" in md and "PASS" in md and "report.png" in md
    assert "Note: the teacher is tiny" in md
    with Image.open(out / "report.png") as png:
        assert png.format == "PNG" and png.size[0] > 300


def test_report_states_failed_claims(tmp_path):
    results = {
        "teacher-beam5": _metrics(tmp_path, "teacher-beam5", 100.0, 10.0, "ofa"),
        "student-kd": _metrics(tmp_path, "student-kd", 50.0, 20.0, "narvl"),
        "student-raw": _metrics(tmp_path, "student-raw", 60.0, 5.0, "narvl"),
    }
    out = tmp_path / "report"
    report = run_report(ReportConfig(results=results), out)
    assert [c["passed"] for c in report["checks"]] == [False, False, False]
    assert (out / "report.md").read_text().count("FAIL") == 3


def test_multi_task_report_groups_claims_baselines_and_examples(tmp_path):
    """One group per task: speed-ups against that task's teacher; the ratio claim for caption, the 2-point margin
    for grounding; KD > raw only where a KD student exists; baseline rows without latency; examples joined by id."""
    ids = range(5)
    base = lambda task, out: [{"id": f"r{i}", "input": f"q{i}", "reference": f"ref{i}", "output": out,
                               "prediction": out} for i in ids]  # noqa: E731
    model = lambda tag: [{"id": f"r{i}", "output": f"{tag}{i}", "prediction": f"{tag}{i}"} for i in reversed(ids)]  # noqa: E731
    boxes = [{"id": f"r{i}", "output": "<bin_1><bin_2><bin_3><bin_4>", "prediction": [1.4, 2.0, 30.6, 40.0]}
             for i in ids]
    tasks = {
        "caption": {
            "baseline": _metrics(tmp_path, "baseline", 50.0, None, "baseline", predictions=base("caption", "a b")),
            "teacher": _metrics(tmp_path, "teacher", 100.0, 40.0, "ofa", predictions=model("t")),
            "student-kd": _metrics(tmp_path, "student-kd", 89.0, 10.0, "narvl", predictions=model("s")),
            "student-raw": _metrics(tmp_path, "student-raw", 95.0, 8.0, "narvl"),
        },
        "grounding": {
            "baseline": _metrics(tmp_path, "baseline", 5.0, None, "baseline", "grounding", "acc@0.5",
                                 base("grounding", "[1, 1, 9, 9]")),
            "teacher": _metrics(tmp_path, "teacher", 60.0, 30.0, "ofa", "grounding", "acc@0.5", boxes),
            "student": _metrics(tmp_path, "student", 58.5, 60.0, "narvl", "grounding", "acc@0.5", boxes),
        },
    }
    out = tmp_path / "report"
    report = run_report(ReportConfig(tasks=tasks, reference="teacher", num_examples=2), out)
    assert [(r["group"], r["label"]) for r in report["rows"]] == [(t, label) for t in tasks for label in tasks[t]]
    speedups = {(r["group"], r["label"]): r["speedup"] for r in report["rows"]}
    assert speedups == pytest.approx({("caption", "baseline"): None, ("caption", "teacher"): 1.0,
                                      ("caption", "student-kd"): 4.0, ("caption", "student-raw"): 5.0,
                                      ("grounding", "baseline"): None, ("grounding", "teacher"): 1.0,
                                      ("grounding", "student"): 0.5})
    checks = {c["claim"]: c["passed"] for c in report["checks"]}
    assert checks == {
        "caption: student-kd CIDEr >= 0.9 x teacher": False,  # 89 < 90
        "caption: student-kd faster than teacher": True,
        "caption: student-kd CIDEr > student-raw": False,
        "grounding: student Acc@0.5 within 2 points of teacher or better": True,  # -1.5 points
        "grounding: student faster than teacher": False,
    }
    ex = report["examples"]
    assert [e["id"] for e in ex["caption"]] == ["r0", "r1"]
    assert ex["caption"][1] == {"id": "r1", "input": "q1", "reference": "ref1",
                                "outputs": {"teacher": "t1", "student-kd": "s1", "student-raw": "-"}}
    assert ex["grounding"][0]["outputs"]["student"] == "[1, 2, 31, 40]"  # the scored box, rounded, not the bins

    lines = format_table(report).splitlines()
    assert lines[0].split()[:5] == ["task", "system", "decoding", "metric", "score"]
    assert lines[2].split() == ["caption", "baseline", "x", "CIDEr", "50.0", "-", "-"]
    assert lines[-1].split() == ["grounding", "student", "x", "Acc@0.5", "58.5", "60.0", "0.5x"]
    md = (out / "report.md").read_text()
    assert "batch 1, 2 CPU thread(s), median over 10 calls" in md
    assert "- **caption** `r0` (q0): reference *ref0*; teacher *t0*; student-kd *s0*; student-raw *-*" in md
    assert md.count("FAIL") == 3 and md.count("PASS") == 2
    with Image.open(out / "report.png") as png:
        assert png.size[0] > png.size[1] * 1.5  # one panel per task, side by side


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
    evaluate = {"task": "caption", "data": "${stages.shapes}", "split": "test", "batch_size": 8, "latency_limit": 2}
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
    assert "student-kd" in printed and "speed-up vs teacher-beam2" in printed
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
        "evaluate": {"batch_size": 8, "latency_limit": 2},
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
    """The four-task demo graph runs end to end: one report with a group per task, each with its baseline row
    (no latency), teacher and students, claim checks per task and three examples per task."""
    import yaml

    from pipelines.cmd_run import run_demo

    yaml_file = tmp_path / "tiny_all.yaml"
    yaml_file.write_text(yaml.safe_dump(tiny_four_task_pipeline(), sort_keys=False))
    report = run_demo(tmp_path / "run", pipeline_file=yaml_file)
    assert report["tasks"] == ["caption", "vqa", "grounding", "entailment"]
    labels = [(r["group"], r["label"]) for r in report["rows"]]
    assert labels == [("caption", "baseline"), ("caption", "teacher"), ("caption", "student-kd"),
                      ("caption", "student-raw"), ("vqa", "baseline"), ("vqa", "teacher"), ("vqa", "student-kd"),
                      ("vqa", "student-raw"), ("grounding", "baseline"), ("grounding", "teacher"),
                      ("grounding", "student"), ("entailment", "baseline"), ("entailment", "teacher"),
                      ("entailment", "student")]
    rows = {key: r for key, r in zip(labels, report["rows"])}
    assert {r["metric"] for (t, _), r in rows.items() if t == "grounding"} == {"acc@0.5"}
    assert rows["caption", "baseline"]["ms_per_sample"] is None and rows["caption", "baseline"]["speedup"] is None
    assert all(r["ms_per_sample"] > 0 and r["latency_threads"] == 1 and r["latency_calls"] == 2
               for (_, label), r in rows.items() if label != "baseline")
    assert rows["vqa", "teacher"]["decoding"] == "AR beam 5 over answer trie"
    assert rows["grounding", "teacher"]["decoding"] == "AR beam 5, 4 bins"
    assert rows["entailment", "teacher"]["decoding"] == "AR candidate scoring"
    assert [c["task"] for c in report["checks"]] == ["caption"] * 3 + ["vqa"] * 3 + ["grounding"] * 2 + ["entailment"] * 2
    test_ids = [json.loads(line)["id"] for line in (tmp_path / "run" / "eval-teacher-vqa" / "predictions.jsonl")
                .read_text().splitlines()]
    for task, examples in report["examples"].items():
        assert [e["id"] for e in examples] == test_ids[:3]
        assert all(e["reference"] and set(e["outputs"]) == {label for t, label in labels if t == task} - {"baseline"}
                   for e in examples)
    printed = capsys.readouterr().out
    assert "Example predictions" in printed and "grounding  shapes-0-test-000000" in printed
    assert "1 CPU thread(s), median over 2 calls" in printed and "teacher" in printed
    assert (tmp_path / "run" / "report.png").is_file()
