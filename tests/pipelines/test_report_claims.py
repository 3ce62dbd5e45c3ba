"""The report stage on hand-made evaluate records (metrics.json as `pipelines.stage_kinds` writes it): the table, and
each claim's verdict from its paired interval: PASS, FAIL, inconclusive, all-zero scores, missing or partly
shared rows, latencies at different batch sizes."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipelines.report import ReportConfig, format_checks, format_table, run_report
from student.intervals import mean_interval

IDS = [f"r{i}" for i in range(200)]


def _latency(ms: float, batches=(1, 8, 64), seed: int = 0, statistic: str = "median") -> dict:
    """Timed calls around `ms` per sample (a few percent of noise), per batch size."""
    rng = np.random.default_rng(seed)
    out = {}
    for b in batches:
        calls = list(ms / b ** 0.3 * rng.lognormal(0, 0.03, 12))
        out[str(b)] = {"ms_per_sample": float(np.median(calls)), "statistic": statistic, "calls": len(calls),
                       "call_ms": calls}
    return out


def _metrics(tmp_path, label, scores, latency=None, model_type="narvl", task="caption", metric="cider",
             ids=IDS, predictions=(), per_row=True):
    """An evaluate-stage folder: metrics.json with per-row scores (their mean is the score), and predictions."""
    folder = tmp_path / f"{task}-{label}"
    folder.mkdir()
    score = float(np.mean(scores))
    first = next(iter(latency)) if latency else None
    record = {
        "task": task, "metric": metric, "score": score, "metrics": {metric: score}, "num_samples": len(scores),
        "model": f"/runs/{label}", "model_type": model_type, "decoding": "x", "latency_threads": 2,
        "ms_per_sample": latency[first]["ms_per_sample"] if latency else None,
        "latency_batch_size": int(first) if latency else None, "latency": latency,
        "interval": mean_interval(scores).to_dict() if per_row else None,
    }
    if per_row:
        record.update(row_ids=list(ids[: len(scores)]), row_scores=[float(s) for s in scores])
    (folder / "metrics.json").write_text(json.dumps(record))
    (folder / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))
    return str(folder)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _verdicts(report):
    return {c["claim"]: c["verdict"] for c in report["checks"]}


def test_clear_claims_pass_and_the_table_shows_intervals_and_speedups_per_batch(tmp_path, rng):
    teacher = rng.uniform(50, 150, 200)
    kd = teacher * 0.97 + rng.normal(0, 2, 200)
    results = {
        "teacher-greedy": _metrics(tmp_path, "teacher-greedy", teacher * 0.8, _latency(20.0, seed=1), "ofa"),
        "teacher-beam5": _metrics(tmp_path, "teacher-beam5", teacher, _latency(60.0, seed=2), "ofa"),
        "student-kd": _metrics(tmp_path, "student-kd", kd, _latency(5.0, seed=3)),
        "student-raw": _metrics(tmp_path, "student-raw", teacher * 0.5, _latency(5.0, seed=4)),
    }
    out = tmp_path / "report"
    report = run_report(ReportConfig(results=results, title="t", note="the teacher is tiny"), out)
    assert _verdicts(report) == {
        "student-kd CIDEr >= 0.9 x teacher-beam5": "PASS",
        "student-kd faster than teacher-beam5 at batch 1": "PASS",
        "student-kd faster than teacher-beam5 at batch 8": "PASS",
        "student-kd faster than teacher-beam5 at batch 64": "PASS",
        "student-kd CIDEr > student-raw": "PASS",
    }
    quality = report["checks"][0]["detail"]
    assert f"ratio {kd.mean() / teacher.mean():.3f} [" in quality and "200 paired rows" in quality
    # every speed-up is the ratio of the two medians at the same batch size, never across batch sizes
    rows = {r["label"]: r for r in report["rows"]}
    for b in ("1", "8", "64"):
        ref, kd = json.loads((tmp_path / "caption-teacher-beam5" / "metrics.json").read_text())["latency"][b], \
            json.loads((tmp_path / "caption-student-kd" / "metrics.json").read_text())["latency"][b]
        sp = rows["student-kd"]["speedups"][b]
        assert sp["estimate"] == pytest.approx(np.median(ref["call_ms"]) / np.median(kd["call_ms"]))
        assert sp["low"] <= sp["estimate"] <= sp["high"]
    assert "row_scores" not in rows["student-kd"]  # per-row lists stay in metrics.json

    lines = format_table(report).splitlines()
    assert lines[0].split() == ["system", "decoding", "CIDEr", "95%", "CI", "ms/sample", "speed-up", "b1",
                                "speed-up", "b8", "speed-up", "b64"]
    iv = rows["teacher-greedy"]["interval"]
    assert lines[2].split()[:3] == ["teacher-greedy", "x", f"{rows['teacher-greedy']['score']:.1f}"]
    assert lines[2].split()[3] == f"{iv['low']:.1f}-{iv['high']:.1f}"
    md = (out / "report.md").read_text()
    assert md.count("- PASS: ") == 5 and "report.png" in md and "Note: the teacher is tiny" in md
    assert "speed-up bN: teacher-beam5's ms/sample over the row's at batch N" in md
    assert "batch 1/8/64: median over 12 calls, 2 CPU thread(s)" in md
    with Image.open(out / "report.png") as png:
        assert png.format == "PNG" and png.size[0] > 300


def test_clearly_worse_claims_fail(tmp_path, rng):
    teacher = rng.uniform(50, 150, 200)
    results = {
        "teacher-beam5": _metrics(tmp_path, "teacher-beam5", teacher, _latency(10.0), "ofa"),
        "student-kd": _metrics(tmp_path, "student-kd", teacher * 0.5, _latency(20.0, seed=5)),
        "student-raw": _metrics(tmp_path, "student-raw", teacher * 0.6, _latency(5.0)),
    }
    report = run_report(ReportConfig(results=results), tmp_path / "report")
    assert set(_verdicts(report).values()) == {"FAIL"} and len(report["checks"]) == 5
    assert (tmp_path / "report" / "report.md").read_text().count("- FAIL: ") == 5
    assert "ratio 0.500 [0.500, 0.500]" in report["checks"][0]["detail"]  # three digits


def test_a_ratio_near_the_threshold_is_inconclusive_not_a_pass(tmp_path, rng):
    """The caption demo's 0.898 measured once: the interval straddles 0.9, so neither PASS nor FAIL."""
    teacher = rng.uniform(300, 600, 200)
    student = teacher * 0.9 + rng.normal(0, 60, 200)
    results = {"teacher-beam5": _metrics(tmp_path, "teacher-beam5", teacher, _latency(10.0), "ofa"),
               "student-kd": _metrics(tmp_path, "student-kd", student, _latency(10.0, seed=9))}
    report = run_report(ReportConfig(results=results), tmp_path / "report")
    verdicts = _verdicts(report)
    assert verdicts["student-kd CIDEr >= 0.9 x teacher-beam5"] == "inconclusive"
    detail = report["checks"][0]["detail"]
    low, high = (float(x) for x in detail.split("[")[1].split("]")[0].split(", "))
    assert low < 0.9 < high and len(detail.split("ratio ")[1].split()[0]) == 5  # e.g. 0.898
    assert set(v for k, v in verdicts.items() if "faster" in k) == {"inconclusive"}  # equal speeds
    assert "inconclusive student-kd CIDEr >= 0.9 x teacher-beam5 (" in format_checks(report)


def test_all_zero_scores_never_pass(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    """`PASS: student VQA acc >= 0.9 x teacher (0.0 vs 0.0)` was printed once; zeros are no evidence."""
    zeros = np.zeros(200)
    tasks = {
        "vqa": {"teacher": _metrics(tmp_path, "teacher", zeros, _latency(10.0), "ofa", "vqa", "vqa_accuracy"),
                "student-kd": _metrics(tmp_path, "student-kd", zeros, _latency(1.0), task="vqa",
                                       metric="vqa_accuracy"),
                "student-raw": _metrics(tmp_path, "student-raw", zeros, _latency(1.0), task="vqa",
                                        metric="vqa_accuracy")},
        "grounding": {"teacher": _metrics(tmp_path, "teacher", zeros, _latency(10.0), "ofa", "grounding", "acc@0.5"),
                      "student": _metrics(tmp_path, "student", zeros, _latency(1.0), task="grounding",
                                          metric="acc@0.5")},
    }
    report = run_report(ReportConfig(tasks=tasks, reference="teacher"), tmp_path / "report")
    verdicts = _verdicts(report)
    assert verdicts["vqa: student-kd VQA acc >= 0.9 x teacher"] == "inconclusive"
    assert verdicts["grounding: student Acc@0.5 within 2 points of teacher or better"] == "inconclusive"
    assert verdicts["vqa: student-kd VQA acc > student-raw"] == "inconclusive"
    details = [c["detail"] for c in report["checks"] if "faster" not in c["claim"]]
    assert "all zero" in details[0] and all("zero" in d for d in details)

    # one side at zero: a student that scores nothing FAILs against a teacher that scores; a KD student above an
    # all-zero raw student is still no PASS
    some = np.random.default_rng(1).uniform(10, 90, 200)
    results = {"teacher-beam5": _metrics(tmp_path / "x", "teacher-beam5", some, _latency(10.0), "ofa"),
               "student-kd": _metrics(tmp_path / "x", "student-kd", zeros, _latency(1.0)),
               "student-raw": _metrics(tmp_path / "x", "student-raw", zeros, _latency(1.0))}
    assert _verdicts(run_report(ReportConfig(results=results), tmp_path / "r2"))[
        "student-kd CIDEr >= 0.9 x teacher-beam5"] == "FAIL"
    results["student-kd"] = _metrics(tmp_path / "y", "student-kd", some, _latency(1.0))
    checks = {c["claim"]: c for c in run_report(ReportConfig(results=results), tmp_path / "r3")["checks"]}
    kd_raw = checks["student-kd CIDEr > student-raw"]
    assert kd_raw["verdict"] == "inconclusive" and "all-zero scores are never a pass" in kd_raw["detail"]


def test_missing_or_partly_shared_rows(tmp_path, rng):
    teacher = rng.uniform(50, 150, 200)
    student = teacher * 0.98
    results = {
        "teacher-beam5": _metrics(tmp_path, "teacher-beam5", teacher, _latency(10.0), "ofa"),
        "student-kd": _metrics(tmp_path, "student-kd", student[:150], _latency(2.0)),  # 50 rows not scored
        "student-raw": _metrics(tmp_path, "student-raw", teacher * 0.2, _latency(2.0), per_row=False),  # old record
    }
    report = run_report(ReportConfig(results=results), tmp_path / "report")
    checks = {c["claim"]: c for c in report["checks"]}
    quality = checks["student-kd CIDEr >= 0.9 x teacher-beam5"]
    assert quality["verdict"] == "PASS" and "150 paired rows (of 150 and 200 scored)" in quality["detail"]
    assert f"ratio {0.98:.3f}" in quality["detail"]  # on the shared rows, not 150 rows over 200
    kd_raw = checks["student-kd CIDEr > student-raw"]
    assert kd_raw["verdict"] == "inconclusive" and "student-raw has no per-row scores" in kd_raw["detail"]
    assert [r["interval"] is None for r in report["rows"]] == [False, False, True]

    repeated = _metrics(tmp_path, "repeated", teacher[:4], _latency(2.0), ids=["a", "a", "b", "c"])
    report = run_report(ReportConfig(results={"teacher-beam5": results["teacher-beam5"], "student-kd": repeated}),
                        tmp_path / "report2")
    assert report["checks"][0]["verdict"] == "inconclusive" and "repeated ids" in report["checks"][0]["detail"]


def test_latency_at_different_batch_sizes_or_statistics_is_not_compared(tmp_path, rng):
    """A batch-32 mean (latency_limit 0: the quality pass) is never divided into a batch-1 median."""
    teacher = rng.uniform(50, 150, 200)
    results = {
        "teacher-beam5": _metrics(tmp_path, "teacher-beam5", teacher, _latency(60.0, batches=(1, 8)), "ofa"),
        "student-kd": _metrics(tmp_path, "student-kd", teacher, {"32": {"ms_per_sample": 1.0, "statistic": "mean",
                                                                         "calls": 1}}),
        "student-raw": _metrics(tmp_path, "student-raw", teacher, {"8": {"ms_per_sample": 1.0, "statistic": "mean",
                                                                          "calls": 1}}),
    }
    report = run_report(ReportConfig(results=results, raw="none"), tmp_path / "report")
    speed = [c for c in report["checks"] if "faster" in c["claim"]]
    assert len(speed) == 1 and speed[0]["verdict"] == "inconclusive"
    assert speed[0]["detail"].startswith("not compared: no batch size timed alike")
    assert "student-kd: batch 32 mean" in speed[0]["detail"]
    rows = {r["label"]: r for r in report["rows"]}
    assert rows["student-kd"]["speedups"] == {} and rows["student-raw"]["speedups"] == {}  # b8 mean vs b8 median
    assert set(rows["teacher-beam5"]["speedups"]) == {"1", "8"}
    lines = format_table(report).splitlines()
    assert lines[3].split()[-2:] == ["-", "-"]  # student-kd: no speed-up at b1 or b8


def test_multi_task_report_groups_claims_baselines_and_examples(tmp_path, rng):
    """One group per task: speed-ups against that task's teacher; the ratio claim for caption, the 2-point margin
    for grounding; KD > raw only where a KD student exists; baseline rows without latency; examples joined by id."""
    ids = range(5)
    base = lambda out: [{"id": f"r{i}", "input": f"q{i}", "reference": f"ref{i}", "output": out,  # noqa: E731
                         "prediction": out} for i in ids]
    model = lambda tag: [{"id": f"r{i}", "output": f"{tag}{i}", "prediction": f"{tag}{i}"} for i in reversed(ids)]  # noqa: E731
    boxes = [{"id": f"r{i}", "output": "<bin_1><bin_2><bin_3><bin_4>", "prediction": [1.4, 2.0, 30.6, 40.0]}
             for i in ids]
    cap = rng.uniform(50, 150, 200)
    hits = (rng.random(200) < 0.6) * 100.0
    tasks = {
        "caption": {
            "baseline": _metrics(tmp_path, "baseline", cap * 0.5, None, "baseline", predictions=base("a b")),
            "teacher": _metrics(tmp_path, "teacher", cap, _latency(40.0), "ofa", predictions=model("t")),
            "student-kd": _metrics(tmp_path, "student-kd", cap * 0.7, _latency(10.0), predictions=model("s")),
            "student-raw": _metrics(tmp_path, "student-raw", cap * 0.8, _latency(8.0)),
        },
        "grounding": {
            "baseline": _metrics(tmp_path, "baseline", hits * 0.1, None, "baseline", "grounding", "acc@0.5",
                                 predictions=base("[1, 1, 9, 9]")),
            "teacher": _metrics(tmp_path, "teacher", hits, _latency(30.0), "ofa", "grounding", "acc@0.5",
                                predictions=boxes),
            "student": _metrics(tmp_path, "student", hits, _latency(60.0), task="grounding", metric="acc@0.5",
                                predictions=boxes),
        },
    }
    out = tmp_path / "report"
    report = run_report(ReportConfig(tasks=tasks, reference="teacher", num_examples=2), out)
    assert [(r["group"], r["label"]) for r in report["rows"]] == [(t, label) for t in tasks for label in tasks[t]]
    speedups = {(r["group"], r["label"]): r["speedups"].get("1", {}).get("estimate") for r in report["rows"]}
    assert [k for k, v in speedups.items() if v is None] == [("caption", "baseline"), ("grounding", "baseline")]
    assert speedups["caption", "teacher"] == 1.0 and speedups["caption", "student-kd"] == pytest.approx(4, rel=0.1)
    assert speedups["grounding", "student"] == pytest.approx(0.5, rel=0.1)
    assert _verdicts(report) == {
        "caption: student-kd CIDEr >= 0.9 x teacher": "FAIL",
        **{f"caption: student-kd faster than teacher at batch {b}": "PASS" for b in (1, 8, 64)},
        "caption: student-kd CIDEr > student-raw": "FAIL",
        "grounding: student Acc@0.5 within 2 points of teacher or better": "PASS",  # the same hits: +0.0 [0, 0]
        **{f"grounding: student faster than teacher at batch {b}": "FAIL" for b in (1, 8, 64)},
    }
    ex = report["examples"]
    assert [e["id"] for e in ex["caption"]] == ["r0", "r1"]
    assert ex["caption"][1] == {"id": "r1", "input": "q1", "reference": "ref1",
                                "outputs": {"teacher": "t1", "student-kd": "s1", "student-raw": "-"}}
    assert ex["grounding"][0]["outputs"]["student"] == "[1, 2, 31, 40]"  # the scored box, rounded, not the bins

    lines = format_table(report).splitlines()
    assert lines[0].split()[:7] == ["task", "system", "decoding", "metric", "score", "95%", "CI"]
    assert lines[2].split()[:5] == ["caption", "baseline", "x", "CIDEr", f"{np.mean(cap * 0.5):.1f}"]
    assert lines[2].split()[-4:] == ["-"] * 4  # a baseline has no latency
    md = (out / "report.md").read_text()
    assert "- **caption** `r0` (q0): reference *ref0*; teacher *t0*; student-kd *s0*; student-raw *-*" in md
    assert md.count("- FAIL: ") == 5 and md.count("- PASS: ") == 4
    with Image.open(out / "report.png") as png:
        assert png.size[0] > png.size[1] * 1.5  # one panel per task, side by side
