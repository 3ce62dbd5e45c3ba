"""`narvl-pipe run --jobs N` (`pipelines.parallel`): independent stages at once, on the same cache rules."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import parallel_kinds  # noqa: E402

from distill.errors import UserError  # noqa: E402
from pipelines import stages  # noqa: E402
from pipelines.stages import parse_pipeline, run_pipeline  # noqa: E402


@pytest.fixture(autouse=True)
def kinds(monkeypatch):
    registry = dict(stages._KINDS)
    registry.update({"meet": parallel_kinds.MEET, "timed": parallel_kinds.TIMED, "light": parallel_kinds.LIGHT})
    monkeypatch.setattr(stages, "_KINDS", registry)


@pytest.fixture
def four_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(before)


def pipeline(board: Path, c_fails: bool = False, timed: bool = False) -> stages.Pipeline:
    """a -> (b, c) -> d, where b and c finish only if they run at the same time, and a light stage l that can start
    with a; with `timed`, an exclusive stage e after a, ready beside b and c, and l still running when they end."""
    def stage(name, kind="meet", after=(), **cfg):
        return {"name": name, "kind": kind,
                "config": {"board": str(board), "after": [f"${{stages.{a}}}" for a in after], **cfg}}

    spec = [stage("a"), stage("b", after=["a"], meet=["c"]),
            stage("c", after=["a"], meet=["b"], sleep=0.3, fail=c_fails), stage("d", after=["b", "c"]),
            stage("l", kind="light", **({"outlast": ["b", "c"], "sleep": 1.0} if timed else {"sleep": 0.3}))]
    if timed:
        spec.insert(3, stage("e", kind="timed", after=["a"], sleep=0.3))
    return parse_pipeline({"name": "p", "stages": spec})


def record(out: Path, name: str) -> dict:
    return json.loads((out / name / "run.json").read_text())


def test_independent_stages_run_at_once_with_a_share_of_the_threads(tmp_path, four_threads):
    out, lines = tmp_path / "out", []
    outcomes = run_pipeline(pipeline(tmp_path), out, log=lines.append, jobs=2)
    assert [o.status for o in outcomes] == ["ran"] * 5
    # b waited for c to start and c for b: both finished, so they ran at the same time
    assert record(out, "b")["threads"] == record(out, "c")["threads"] == 2
    # a and d compute alone: every thread (the light stage l, ready with a, takes no share)
    assert record(out, "a")["threads"] == record(out, "d")["threads"] == 4 and record(out, "l")["threads"] == 1
    assert record(out, "d")["start"] > max(record(out, s)["end"] for s in "bc")
    assert all((out / "logs" / f"{s}.log").is_file() for s in "abcdl")
    assert any("[2/5] b" in ln and "running" in ln and "2 threads" in ln for ln in lines)
    again = run_pipeline(pipeline(tmp_path), out, log=lines.append, jobs=2)
    assert [o.status for o in again] == ["skipped"] * 5


def test_one_job_runs_them_in_order(tmp_path):
    """jobs=1 is the sequential runner: b waits for c, which cannot start before b ends."""
    p = parse_pipeline({"name": "p", "stages": [
        {"name": "b", "kind": "meet", "config": {"board": str(tmp_path), "meet": ["c"], "patience": 0.2}},
        {"name": "c", "kind": "meet", "config": {"board": str(tmp_path)}}]})
    with pytest.raises(TimeoutError, match="c never started"):
        run_pipeline(p, tmp_path / "out", log=lambda s: None, jobs=1)


def test_an_exclusive_stage_runs_alone_with_every_thread(tmp_path, four_threads):
    out, lines = tmp_path / "out", []
    run_pipeline(pipeline(tmp_path, timed=True), out, log=lines.append, jobs=3)
    order = [(ln.split()[1], ln.split()[2]) for ln in lines]
    # b and c end first; e, ready then, waits for the light stage l too (it still ran for 1 s)
    assert order.index(("l", "done")) < order.index(("e", "running"))
    e = record(out, "e")
    assert e["threads"] == 4
    for other in "abcdl":
        r = record(out, other)
        assert r["end"] <= e["start"] or r["start"] >= e["end"], f"{other} ran during the exclusive stage"


def test_a_failed_stage_fails_the_run_and_keeps_what_finished(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"stage 'c' failed: RuntimeError: c failed on purpose \(full log: .*c\.log"):
        run_pipeline(pipeline(tmp_path, c_fails=True), out, log=lambda s: None, jobs=2)
    assert (out / "b" / "stage_complete.json").exists()  # it ran beside c and finished
    assert not (out / "d").exists()  # nothing starts after a failure
    for f in tmp_path.glob("*.started"):
        f.unlink()
    (tmp_path / "b.started").write_text("0")  # b is cached: c must not wait for it to start again
    status = {o.name: o.status for o in run_pipeline(pipeline(tmp_path), out, log=lambda s: None, jobs=2)}
    assert status == {"a": "skipped", "b": "skipped", "c": "ran", "d": "ran", "l": "skipped"}


def test_children_release_what_they_created(tmp_path):
    """A stage's progress bar makes a multiprocessing lock; a child that ended with os._exit left it to the
    resource tracker, which warned of leaked semaphores when the run exited."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, parallel_kinds.__file__, str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "b" / "stage_complete.json").exists()
    assert "leaked" not in done.stderr, done.stderr[-2000:]


def test_a_killed_runner_leaves_no_stage_running(tmp_path):
    """kill -9 of `narvl-pipe run --jobs 2`: its stages end too (as they do with --jobs 1), so a re-run never meets
    an orphan writing into the same folder."""
    from tests.proc_helpers import alive

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    runner = subprocess.Popen([sys.executable, parallel_kinds.__file__, str(tmp_path), "300"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = [tmp_path / f"{s}.started" for s in "bc"]
    deadline = time.monotonic() + 120
    while not all(f.exists() and f.read_text() for f in started):
        assert runner.poll() is None and time.monotonic() < deadline, "the two stages never started"
        time.sleep(0.05)
    pids = [int(f.read_text()) for f in started]
    assert all(alive(p) for p in pids)
    runner.kill()
    runner.wait()
    deadline = time.monotonic() + 30
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids), "a stage outlived its runner"
