"""Every timing benchmark runs at a tiny size (a one-layer OFA, two rounds: `--test-rounds`, the test suite's flag)
and writes the harness's record: pinning, rounds, the paired ratios (recomputed here from the per-round times) and the
output checks. No speed is asserted."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
from bench_checks import check_harness, pinned_cores  # noqa: E402

ROUNDS = ["--test-rounds", "2"]


def run_benchmark(script: str, *args, out: Path) -> dict:
    cmd = [sys.executable, str(ROOT / "benchmarks" / script), *map(str, args), *ROUNDS]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    check_harness(result, rounds=2, cores=pinned_cores())
    for p in result["pairs"]:  # what the benchmark printed is the recorded figure
        assert f"{p['name']}: {p['speedup']:.3f}x" in proc.stdout
    return result


def test_benchmarks_import_no_pipelines_module():
    """Benchmarks use library modules only (the serve benchmark starts the `narvl-pipe serve` command)."""
    pattern = re.compile(r"^\s*(from|import) pipelines\b", re.M)
    offenders = [p.name for p in (ROOT / "benchmarks").iterdir() if p.suffix in (".py", ".sh")
                 and pattern.search(p.read_text())]
    assert offenders == []


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("OFA_OFFICIAL_SRC"), reason="needs OFA-Sys's transformers port "
                    "($OFA_OFFICIAL_SRC, see benchmarks/teacher_vs_official.py)")
def test_teacher_vs_official(tmp_path):
    out = tmp_path / "r.json"
    res = run_benchmark("teacher_vs_official.py", "--sizes", "test", "--batches", "1", "8", "--out", out, out=out)
    assert res["identity"] and all(res["identity"].values())
    assert [p["name"] for p in res["pairs"]] == [f"project vs official test/{d}/b{b}"
                                                 for d in ("greedy", "beam5") for b in (1, 8)]
    assert all(p["same_outputs"] for p in res["pairs"])
    assert res["harness"]["versions"]["official"]["transformers"].startswith("4.18")


@pytest.mark.slow
def test_teacher_generate(tmp_path):
    out = tmp_path / "r.json"
    res = run_benchmark("teacher_generate.py", "--sizes", "test", "--batches", "1", "2", "--new-tokens", "4",
                        "--out", out, out=out)
    cache = [p for p in res["pairs"] if p["name"].startswith("kv cache")]
    half = [p for p in res["pairs"] if p["name"].startswith("bfloat16")]
    assert len(cache) == len(half) == 4 and all(p["same_outputs"] for p in cache)
    assert not any(p["same_outputs"] for p in half)
    assert all(0 <= a["token_agreement"] <= 1 for a in res["agreement"].values()) and len(res["agreement"]) == 4


@pytest.mark.slow
def test_student_vs_teacher(tmp_path):
    out = tmp_path / "r.json"
    res = run_benchmark("student_vs_teacher.py", "--sizes", "test", "--batches", "1", "2", "--out", out, out=out)
    assert [(c["task"], c["batch"]) for c in res["cases"]] == [
        (t, b) for t in ("caption", "vqa", "grounding", "entailment") for b in (1, 2)]
    assert len(res["pairs"]) == 3 * 8 and res["harness"]["pinning"].keys() == {"student", "teacher"}
    assert {p["name"].split(" test/")[0] for p in res["pairs"]} == {"narvl vs ar_greedy", "narvl vs ar_beam5",
                                                                    "enc+1dec vs narvl"}


@pytest.mark.slow
def test_serve(tmp_path):
    out = tmp_path / "r.json"
    res = run_benchmark("serve.py", "--d-model", "32", "--layers", "1", "--heads", "2", "--resolution", "32",
                        "--requests", "4", "--teacher-requests", "2", "--clients", "1", "3", "--out", out, out=out)
    names = [p["name"] for p in res["pairs"]]
    assert names[:2] == ["onnxruntime vs eager b1", "onnxruntime vs eager b8"]
    assert all(p["same_outputs"] for p in res["pairs"][:2])  # onnxruntime decodes the same ids as PyTorch
    assert len(names) == 2 + 2 * 2 and len(res["harness"]["pinning"]) == 5
    batching = res["info"]["student onnx, batching/c3"]
    assert all(1 <= r["mean_batch"] <= 3 for r in batching)


@pytest.mark.slow
def test_distill_overhead(tmp_path):
    out = tmp_path / "r.json"
    res = run_benchmark("distill_overhead.py", "--rows", "64", "--shard-size", "32", "--batch-size", "8",
                        "--warmup-batches", "1", "--out", out, out=out)
    assert [p["name"] for p in res["pairs"]] == [f"distill vs bare, {t} (steady-state throughput)"
                                                 for t in ("ofa", "git")]  # OFA and a transformers teacher
    assert all(p["same_outputs"] for p in res["pairs"])  # the same captions every round
    for key, rows in (("bare/ofa-rows64", 64), ("distill/ofa-rows64", 64), ("bare/git-rows64", 64),
                      ("distill/git-rows64", 64), ("distill/ofa-rows32", 32)):  # the tenth: memory
        # steady state: from the start of batch 1 to the start of the last one
        assert [(r["rows"], r["steady_rows"]) for r in res["info"][key]] == [(rows, rows - 2 * 8)] * 2
    assert res["peak_anon_pss_ratio_full_over_tenth"] > 0


@pytest.mark.slow
def test_demo_latency(tmp_path):
    """On evaluate stages shaped as a demo leaves them (stage_config.json + metrics.json per stage folder)."""
    sys.path.insert(0, str(ROOT / "tests" / "student"))
    import student_helpers as h

    world = h.make_world(tmp_path, n_train=8, n_val=2)
    teacher = h.make_teacher(world, tmp_path / "teacher", "caption", 1)
    student = h.make_student(teacher, tmp_path / "student")
    demo = tmp_path / "demo"
    for name, model, beams in (("eval-teacher-beam5", teacher, 2), ("eval-student-kd", student, None)):
        folder = demo / f"{name}-0123"
        folder.mkdir(parents=True)
        config = {"model": str(model), "task": "caption", "data": str(world), "split": "test", "num_beams": beams,
                  "batch_size": 4, "limit": None, "answers": None, "latency_batch_sizes": [1, 2], "latency_limit": 3}
        (folder / "stage_config.json").write_text(json.dumps({"name": name, "kind": "evaluate", "config": config}))
        (folder / "metrics.json").write_text("{}")
    out = tmp_path / "r.json"
    res = run_benchmark("demo_latency.py", demo, "--results", out, out=out)
    assert [p["name"] for p in res["pairs"]] == [f"eval-student-kd vs eval-teacher-beam5 at batch {b}" for b in (1, 2)]
    assert all(r["calls"] == 5 for r in res["info"]["eval-student-kd/b2"])  # student.latency.MIN_CALLS


@pytest.mark.slow
def test_web_scale(tmp_path):
    """Tiny: 4 tars of 16 rows, RSS over 1 tar and all 4, the stream vs map-style pair, one kill."""
    out = tmp_path / "r.json"
    res = run_benchmark("web_scale.py", "--out", tmp_path / "ws", "--rows", "64", "--small", "32", "--shards", "4",
                        "--batch-size", "8", "--shard-size", "16", "--flush-every", "8", "--workers", "2",
                        "--kill-after", "0", "--rate-rows", "32", "--results", out, out=out)
    [pair] = res["pairs"]
    assert pair["same_outputs"] and pair["name"].startswith("stream vs map-style")  # the same rows every round
    assert [r["rows"] for r in res["info"]["stream/rate"]] == [r["rows"] for r in res["info"]["map/rate"]] == [32] * 2
    assert res["exit_small"] == res["exit_all"] == 0 and res["peak_rss_small_mb"] > 0
    assert (res["rows_out_small"], res["rows_out_all"]) == (32, 64)
    assert res["kill"]["bound"] == 16 and 0 <= res["kill"]["rows_lost"] and res["small_rows"] == res["rate_rows"] == 32
