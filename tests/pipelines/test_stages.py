"""Stage cache rules of `narvl-pipe run`, with cheap stage functions (the real stages are in test_run.py)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from distill.errors import UserError
from pipelines import stages
from pipelines.stages import StageKind, load_pipeline, parse_pipeline, run_pipeline

CALLS: list[str] = []  # stage names, in the order their functions ran
CRASH: dict[str, int] = {}  # kind -> item index after which the function raises (a crash mid-stage)


class Crash(RuntimeError):
    pass


@dataclass
class MakeConfig:
    """Writes n items, one file each; resumes by skipping items already written (like distill shards)."""

    value: int = 1
    n_items: int = 4
    log_every: int = 10
    """How often to log: changes nothing in the artifact (declared `non_result` by the kind)."""
    out: str = ""
    resume: bool = False


def _make(cfg: MakeConfig, out: Path) -> None:
    assert cfg.out == str(out) and cfg.resume is True
    CALLS.append(out.name.rsplit("-", 1)[0])
    for i in range(cfg.n_items):
        item = out / f"item{i}.txt"
        if item.exists():
            continue
        item.write_text(str(cfg.value * i))
        (out / "ckpt").mkdir(exist_ok=True)  # resume state, like trainer checkpoints
        (out / "ckpt" / f"after{i}").write_text("x" * 1000)
        with open(out.parent / "computed.log", "a") as log:
            log.write(f"{out.name} {i}\n")
        if CRASH.get("make") == i:
            raise Crash(f"crash after item {i}")


@dataclass
class SumConfig:
    """Sums the items of its inputs, plus an offset (not resumable: restarts from an empty folder)."""

    inputs: list[str] = field(default_factory=list)
    offset: int = 0


def _sum(cfg: SumConfig, out: Path) -> None:
    CALLS.append(out.name.rsplit("-", 1)[0])
    assert not any(out.iterdir()), "a non-resumable stage starts from an empty folder"
    total = cfg.offset
    for folder in cfg.inputs:
        total += sum(int(p.read_text()) for p in Path(folder).glob("item*.txt"))
        total += sum(int(p.read_text()) for p in Path(folder).glob("sum.txt"))
    (out / "partial").write_text("x")
    if CRASH.get("sum") is not None:
        raise Crash("sum crashed")
    (out / "sum.txt").write_text(str(total))


@pytest.fixture(autouse=True)
def fake_kinds(monkeypatch):
    kinds = dict(stages._KINDS)  # the built-in kinds (torch imports) are loaded only if a test needs them
    kinds["make"] = StageKind("make", MakeConfig, _make, out_field="out", fixed={"resume": True}, resumable=True,
                              non_result=frozenset({"log_every"}), resume_state=("ckpt",))
    kinds["sum"] = StageKind("sum", SumConfig, _sum)
    monkeypatch.setattr(stages, "_KINDS", kinds)
    CALLS.clear()
    CRASH.clear()


def diamond(a_value=1, b_offset=0, c_offset=0, d_offset=0):
    """a -> b, a -> c, (b, c) -> d."""
    return parse_pipeline({"name": "diamond", "stages": [
        {"name": "a", "kind": "make", "config": {"value": a_value}},
        {"name": "b", "kind": "sum", "config": {"inputs": ["${stages.a}"], "offset": b_offset}},
        {"name": "c", "kind": "sum", "config": {"inputs": ["${stages.a}"], "offset": c_offset}},
        {"name": "d", "kind": "sum", "config": {"inputs": ["${stages.b}", "${stages.c}"], "offset": d_offset}},
    ]})


def result(out: Path, stage: str) -> int:
    return int((out / stage / "sum.txt").read_text())


def test_first_run_runs_all_and_rerun_skips_all(tmp_path):
    out1 = run_pipeline(diamond(), tmp_path, log=lambda s: None)
    assert CALLS == ["a", "b", "c", "d"] and [o.status for o in out1] == ["ran"] * 4
    # items 0..3 with value 1 sum to 6: b = c = 6, d = 12 (checked by hand)
    assert result(tmp_path, "b") == 6 and result(tmp_path, "d") == 12
    CALLS.clear()
    out2 = run_pipeline(diamond(), tmp_path, log=lambda s: None)
    assert CALLS == [] and [o.status for o in out2] == ["skipped"] * 4
    assert [o.dir for o in out1] == [o.dir for o in out2]


def test_changing_one_config_reruns_it_and_downstream_only(tmp_path):
    before = {o.name: o.dir for o in run_pipeline(diamond(), tmp_path, log=lambda s: None)}
    CALLS.clear()
    after = {o.name: o.dir for o in run_pipeline(diamond(b_offset=10), tmp_path, log=lambda s: None)}
    assert CALLS == ["b", "d"]
    assert after["a"] == before["a"] and after["c"] == before["c"]
    assert after["b"] != before["b"] and after["d"] != before["d"]
    assert result(tmp_path, "d") == 22
    CALLS.clear()  # going back to the old config finds the old artifacts still cached
    run_pipeline(diamond(), tmp_path, log=lambda s: None)
    assert CALLS == [] and result(tmp_path, "d") == 12
    CALLS.clear()  # a change at the root invalidates everything below it
    run_pipeline(diamond(a_value=2), tmp_path, log=lambda s: None)
    assert CALLS == ["a", "b", "c", "d"] and result(tmp_path, "d") == 24


def test_fingerprint_ignores_out_location_key_order_and_explicit_defaults(tmp_path):
    p1 = stages.plan(diamond(), tmp_path / "x")
    p2 = stages.plan(diamond(), tmp_path / "y")
    assert [s.fingerprint for s in p1] == [s.fingerprint for s in p2]
    explicit = parse_pipeline({"stages": [{"config": {"n_items": 4, "value": 1}, "kind": "make", "name": "a"}]})
    assert stages.plan(explicit, tmp_path)[0].fingerprint == p1[0].fingerprint


def test_non_result_fields_change_no_fingerprint(tmp_path):
    run_pipeline(diamond(), tmp_path, log=lambda s: None)
    CALLS.clear()
    relogged = parse_pipeline({"stages": [{"name": "a", "kind": "make", "config": {"log_every": 1}}]})
    out = run_pipeline(relogged, tmp_path, log=lambda s: None)
    assert CALLS == [] and out[0].status == "skipped"
    assert stages.plan(relogged, tmp_path)[0].config["log_every"] == 1  # still handed to the stage when it runs
    with pytest.raises(ValueError, match="non_result.*not_a_field"):
        StageKind("bad", MakeConfig, _make, non_result=frozenset({"not_a_field"}))


def test_finished_stage_drops_its_resume_state_only(tmp_path):
    CRASH["make"] = 1
    with pytest.raises(Crash):
        run_pipeline(diamond(), tmp_path, log=lambda s: None)
    a_dir = next(tmp_path.glob("a-*"))
    assert (a_dir / "ckpt").is_dir()  # an interrupted stage keeps what its resume needs
    CRASH.clear()
    lines: list[str] = []
    run_pipeline(diamond(), tmp_path, log=lines.append)
    assert not (a_dir / "ckpt").exists() and (a_dir / "item3.txt").is_file()
    assert any("removed ckpt/ (0.0 MB, only needed to resume)" in line for line in lines)
    (a_dir / "ckpt").mkdir()  # left by an older narvl-pipe: a cached stage is cleaned too
    run_pipeline(diamond(), tmp_path, log=lambda s: None)
    assert not (a_dir / "ckpt").exists()


def test_cached_stage_reports_the_time_it_took_when_computed(tmp_path):
    from pipelines.cmd_run import timing_line

    first = run_pipeline(diamond(), tmp_path, log=lambda s: None)
    for o in first:  # pretend each stage took 2 minutes (cpu 3): the markers hold the times of the computing run
        marker = json.loads((o.dir / stages.COMPLETE_MARKER).read_text())
        (o.dir / stages.COMPLETE_MARKER).write_text(json.dumps({**marker, "seconds": 120.0, "cpu_seconds": 180.0}))
    lines: list[str] = []
    second = run_pipeline(diamond(), tmp_path, log=lines.append)
    assert [o.cached["seconds"] for o in second] == [120.0] * 4
    assert all("took 2m00s" in line for line in lines)
    line = timing_line(second, wall=0.01)
    assert "0.0s" not in line and "all 4 stages cached" in line and "8m00s" in line
    third = run_pipeline(diamond(), tmp_path, force=["d"], log=lambda s: None)
    line = timing_line(third, wall=3.0)
    assert "wall time 3.0s" in line and "3 of 4 stages cached" in line and "6m00s" in line


def test_stage_config_json_holds_resolved_config(tmp_path):
    run_pipeline(diamond(), tmp_path, log=lambda s: None)
    a_dir = (tmp_path / "a").resolve()
    saved = json.loads((tmp_path / "d" / "stage_config.json").read_text())
    assert saved["kind"] == "sum" and saved["name"] == "d"
    assert saved["config"] == {"inputs": [str((tmp_path / "b").resolve()), str((tmp_path / "c").resolve())], "offset": 0}
    assert json.loads((a_dir / "stage_config.json").read_text())["config"] == {"value": 1, "n_items": 4, "log_every": 10}
    marker = json.loads((a_dir / "stage_complete.json").read_text())
    assert a_dir.name == "a-" + marker["fingerprint"]


def test_crash_mid_stage_resumes_inside_resumable_stage(tmp_path):
    CRASH["make"] = 1
    with pytest.raises(Crash):
        run_pipeline(diamond(), tmp_path, log=lambda s: None)
    CRASH.clear()
    out = run_pipeline(diamond(), tmp_path, log=lambda s: None)
    assert out[0].status == "resumed"
    computed = (tmp_path / "computed.log").read_text().split()[1::2]
    assert computed == ["0", "1", "2", "3"]  # items 0 and 1 were not recomputed
    assert result(tmp_path, "d") == 12


def test_crash_in_non_resumable_stage_restarts_it_clean(tmp_path):
    CRASH["sum"] = 0
    with pytest.raises(Crash):
        run_pipeline(diamond(), tmp_path, log=lambda s: None)
    CRASH.clear()
    CALLS.clear()
    out = run_pipeline(diamond(), tmp_path, log=lambda s: None)  # _sum asserts that its folder is empty
    assert [o.status for o in out] == ["skipped", "ran", "ran", "ran"] and CALLS == ["b", "c", "d"]


def test_force_reruns_stage_and_its_dependents(tmp_path):
    run_pipeline(diamond(), tmp_path, log=lambda s: None)
    CALLS.clear()
    out = run_pipeline(diamond(), tmp_path, force=["b"], log=lambda s: None)
    assert CALLS == ["b", "d"] and [o.status for o in out] == ["skipped", "forced", "skipped", "forced"]
    CALLS.clear()
    run_pipeline(diamond(), tmp_path, force=["a"], log=lambda s: None)
    assert CALLS == ["a", "b", "c", "d"]
    assert (tmp_path / "computed.log").read_text().count("\n") == 8  # a forced resumable stage starts from scratch
    with pytest.raises(UserError, match="no such stage"):
        run_pipeline(diamond(), tmp_path, force=["zz"], log=lambda s: None)


@pytest.mark.parametrize("crash_kind, calls, statuses", [
    ("make", ["a", "b", "c", "d"], ["resumed", "forced", "forced", "forced"]),  # killed inside the forced stage
    ("sum", ["b", "c", "d"], ["skipped", "ran", "forced", "forced"]),  # killed after it, inside b
])
def test_interrupted_forced_run_still_reruns_downstream(tmp_path, crash_kind, calls, statuses):
    """`--force a` killed midway: the next plain run still re-runs every stage after a, from scratch."""
    run_pipeline(diamond(), tmp_path, log=lambda s: None)
    CRASH[crash_kind] = 1
    with pytest.raises(Crash):
        run_pipeline(diamond(), tmp_path, force=["a"], log=lambda s: None)
    CRASH.clear()
    CALLS.clear()
    out = run_pipeline(diamond(), tmp_path, log=lambda s: None)
    assert CALLS == calls and [o.status for o in out] == statuses
    # 4 items first, then the forced a's own 4 items (a resumed forced run keeps its fresh items, never the old ones)
    assert (tmp_path / "computed.log").read_text().count("\n") == 8
    assert result(tmp_path, "d") == 12
    CALLS.clear()
    run_pipeline(diamond(), tmp_path, log=lambda s: None)
    assert CALLS == []  # once done, cached again


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"stages": [{"name": "a", "kind": "nope"}]}, "unknown kind 'nope'"),
        ({"stages": [{"name": "a", "kind": "make"}, {"name": "a", "kind": "make"}]}, "unique"),
        ({"stages": [{"name": "b", "kind": "sum", "config": {"inputs": ["${stages.a}"]}},
                     {"name": "a", "kind": "make"}]}, "which is a later stage"),
        ({"stages": [{"name": "b", "kind": "sum", "config": {"inputs": ["${stages.zz}"]}}]}, "which is no stage"),
        ({"stages": []}, "non-empty"),
    ],
)
def test_bad_pipelines_are_refused_with_one_line(doc, message):
    with pytest.raises(UserError, match=message) as err:
        parse_pipeline(doc)
    assert "\n" not in str(err.value)


def test_unknown_or_reserved_field_refused_before_anything_runs(tmp_path):
    pipe = parse_pipeline({"stages": [{"name": "a", "kind": "make"},
                                      {"name": "b", "kind": "sum", "config": {"offest": 1}}]})
    with pytest.raises(UserError, match="unknown config field.*offest.*allowed: inputs, offset"):
        run_pipeline(pipe, tmp_path, log=lambda s: None)
    assert CALLS == []
    pipe = parse_pipeline({"stages": [{"name": "a", "kind": "make", "config": {"out": "/elsewhere"}}]})
    with pytest.raises(UserError, match="unknown config field.*out"):
        run_pipeline(pipe, tmp_path, log=lambda s: None)


def test_yaml_file_and_concurrent_run_refused(tmp_path):
    yaml_file = tmp_path / "p.yaml"
    yaml_file.write_text("name: p\nstages:\n  - name: a\n    kind: make\n    config: {value: 3}\n")
    pipe = load_pipeline(yaml_file)
    assert pipe.name == "p" and pipe.stages[0].config == {"value": 3}
    from distill.locks import ProcessLock

    out = tmp_path / "out"
    out.mkdir()
    with ProcessLock(out / stages.LOCK_FILE) as held:  # held in this process: refused too (distill.locks)
        assert held.acquire()
        with pytest.raises(UserError, match=rf"another `narvl-pipe run` \(pid {os.getpid()}\)"):
            run_pipeline(pipe, out, log=lambda s: None)
    assert [o.status for o in run_pipeline(pipe, out, log=lambda s: None)] == ["ran"]


SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from dataclasses import dataclass
    from pathlib import Path
    from pipelines import stages

    @dataclass
    class SlowConfig:
        n_items: int = 6
        out: str = ""

    def slow(cfg, out):
        if os.environ.get("FORK_CHILD") and os.fork() == 0:  # like a DataLoader worker: inherits every fd
            (out.parent / "child.pid").write_text(str(os.getpid()))
            time.sleep(120)
            os._exit(0)
        for i in range(cfg.n_items):
            item = out / f"item{i}.txt"
            if item.exists():
                continue
            time.sleep(float(os.environ.get("DELAY", "0")))
            with open(out.parent / "computed.log", "a") as log:
                log.write(f"{i}\\n")
            tmp = item.with_suffix(".tmp")  # atomic, as real stages write: an item is there whole or not at all
            tmp.write_text(str(i))
            os.replace(tmp, item)

    stages.register_stage_kind(stages.StageKind("slow", SlowConfig, slow, out_field="out", resumable=True))
    pipe = stages.parse_pipeline({"stages": [{"name": "s", "kind": "slow"}]})
    for o in stages.run_pipeline(pipe, sys.argv[1]):
        print("STATUS", o.name, o.status)
    """
)


def _complete_items(out) -> list[int]:
    """Items the killed run finished. The kill may land between an item's log line and its file: that item was
    not finished, and computing it again is right. Read only after the killed process is reaped."""
    return sorted({int(p.stem[4:]) for p in out.glob("*/item*.txt")})  # the stage's folder (and its link, once done)


def _assert_resumed_exactly(out, log, complete: list[int], logged: int) -> None:
    """The resumed run computed exactly the items the killed one had not finished (nothing recomputed, nothing
    lost), and every item holds its value."""
    assert log.read_text().split()[logged:] == [str(i) for i in range(6) if i not in complete]
    assert _complete_items(out) == list(range(6))
    assert sorted(p.read_text() for p in out.glob("s-*/item*.txt")) == [str(i) for i in range(6)]


def test_sigkill_mid_stage_then_resume_in_new_process(tmp_path):
    script = tmp_path / "slow_pipeline.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    env = {**os.environ, "DELAY": "0.3"}
    proc = subprocess.Popen([sys.executable, str(script), str(out)], env=env, stdout=subprocess.PIPE, text=True)
    log = out / "computed.log"
    deadline = time.time() + 60
    while time.time() < deadline and (not log.exists() or len(log.read_text().split()) < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    complete, logged = _complete_items(out), len(log.read_text().split())
    assert 1 <= len(complete) < 6
    res = subprocess.run([sys.executable, str(script), str(out)], env={**os.environ, "DELAY": "0"},
                         capture_output=True, text=True, check=True)
    assert "STATUS s resumed" in res.stdout
    _assert_resumed_exactly(out, log, complete, logged)
    res = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, check=True)
    assert "STATUS s skipped" in res.stdout


def test_sigkill_leaves_no_lock_with_a_forked_child_and_resumes_at_once(tmp_path):
    """The stage lock belongs to the `run` process, not to children a stage forked: right after `kill -9` of the
    run (its child still alive), the same command resumes."""
    script = tmp_path / "slow_pipeline.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(script), str(out)], env={**os.environ, "DELAY": "0.3", "FORK_CHILD": "1"},
                            stdout=subprocess.PIPE, text=True)
    child_file, log = out / "child.pid", out / "computed.log"
    child = None
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (child_file.is_file() and child_file.read_text() and log.exists()):
            time.sleep(0.05)
        child = int(child_file.read_text())
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        os.kill(child, 0)  # the forked child outlives the run (nothing here makes it die)
        complete, logged = _complete_items(out), len(log.read_text().split())
        res = subprocess.run([sys.executable, str(script), str(out)], env={**os.environ, "DELAY": "0"},
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-2000:]
        assert "STATUS s resumed" in res.stdout
        _assert_resumed_exactly(out, log, complete, logged)
    finally:
        if proc.poll() is None:
            proc.kill()
        if child is not None:
            os.kill(child, signal.SIGKILL)
