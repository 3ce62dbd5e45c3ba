"""benchmarks/serve.py runs on CPU end to end at a tiny size and writes what its table prints (no speed asserted)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_serve_benchmark_writes_side_by_side_results(tmp_path):
    out = tmp_path / "serve.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "serve.py"), "--quick", "--d-model", "32", "--layers", "1",
           "--heads", "2", "--resolution", "32", "--requests", "8", "--teacher-requests", "2", "--rounds", "2",
           "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert [r["batch"] for r in res["latency"]] == [1, 8]
    for r in res["latency"]:
        ms = r["ms"]
        assert ms["eager"] > 0 and ms["onnxruntime"] > 0
        assert r["ort_over_eager"] == pytest.approx(ms["onnxruntime"] / ms["eager"])
    servers = {r["server"] for r in res["throughput"]}
    assert len(servers) == 3  # batched student, unbatched student, the AR teacher for context
    for name in servers:
        rows = [r for r in res["throughput"] if r["server"] == name]
        assert [r["clients"] for r in rows] == [1, 8, 32]
        assert all(r["requests_per_s"] > 0 and 1 <= r["mean_batch"] <= r["max_batch_size"] for r in rows)
    assert res["run"]["export_max_abs_diff"] < 1e-4
    assert "ratio ort / eager" in proc.stdout
