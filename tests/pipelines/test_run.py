"""`narvl-pipe run` end to end with the real stages on a tiny world, and the report stage."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from pipelines.report import ReportConfig, format_table, run_report


def _metrics(tmp_path, label, score, ms, model_type):
    folder = tmp_path / label
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({
        "task": "caption", "metric": "cider", "score": score, "ms_per_sample": ms, "num_samples": 10,
        "model": f"/runs/{label}", "model_type": model_type, "decoding": "x", "metrics": {"cider": score},
    }))
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
    report = run_report(ReportConfig(results=results, title="t"), out)
    speedups = {r["label"]: r["speedup"] for r in report["rows"]}
    assert speedups == pytest.approx({"teacher-greedy": 3.0, "teacher-beam5": 1.0, "student-kd": 12.0, "student-raw": 12.0})
    assert [c["passed"] for c in report["checks"]] == [True, True, True]  # 0.95x >= 0.9, 12x faster, 95 > 40

    lines = format_table(report).splitlines()
    assert lines[0].split()[:4] == ["system", "decoding", "CIDEr", "ms/sample"]
    assert lines[2].split() == ["teacher-greedy", "x", "80.0", "20.0", "3.0x"]
    assert json.loads((out / "report.json").read_text())["rows"][2]["label"] == "student-kd"
    md = (out / "report.md").read_text()
    assert "| student-kd | x | 95.0 | 5.0 | 12.0x |" in md and "PASS" in md and "report.png" in md
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
