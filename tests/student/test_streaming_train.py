"""`train-student --streaming` on a distill output: a run cut after a checkpoint and resumed, and a run stopped by
SIGTERM (which saves a checkpoint at the current step) and resumed, end with the weights of an uninterrupted run,
bit for bit."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the suite runs with --import-mode=importlib
import student_helpers as h  # noqa: E402

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream-train")
    world = h.make_world(root, n_train=16, n_val=4)
    teacher = h.make_teacher(world, root / "teacher")
    return teacher, h.make_distilled(teacher, world, root / "distilled", limit=16)


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def _same(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


def _args(teacher, data, steps: int) -> list:
    return ["--task", "caption", "--data", data, "--init", teacher, "--streaming", "--shuffle-buffer", "5",
            "--max-steps", str(steps), "--batch-size", "4", "--lr", "1e-3", "--eval-limit", "2", "--report-to", "none"]


def test_streaming_resume_after_a_crash_is_bitwise_equal(distilled, tmp_path):
    teacher, data = distilled
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    out = h.cli("train-student", "--out", ref, *_args(teacher, data, 6), "--save-every", "2").output
    assert "KD targets: the teacher's ids as they are" in out
    # 6 steps of 4 rows over 16 rows: the stream wraps into a second epoch, and the buffer holds rows across steps
    h.cli("train-student", "--out", cut, *_args(teacher, data, 6), "--save-every", "2")
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["step_00000004", "step_00000006"]
    assert (cut / "checkpoints" / "step_00000004" / "data_state_0.pt").is_file()
    shutil.rmtree(cut / "checkpoints" / "step_00000006")  # as if killed after the step-4 checkpoint
    (cut / "model.safetensors").unlink()
    h.cli("train-student", "--out", cut, *_args(teacher, data, 6), "--save-every", "2", "--resume")
    assert _same(ref, cut)


def test_sigterm_saves_a_checkpoint_and_the_resume_is_bitwise_equal(distilled, tmp_path):
    teacher, data = distilled
    steps = 30
    ref, stopped = tmp_path / "ref", tmp_path / "stopped"
    h.cli("train-student", "--out", ref, *_args(teacher, data, steps))
    env = dict(os.environ, PYTHONPATH=str(REPO), ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1")
    cmd = [sys.executable, "-m", "pipelines.cli", "train-student", "--out", str(stopped),
           *map(str, _args(teacher, data, steps))]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = stopped / "log.jsonl"
    t0 = time.time()
    while not (log.is_file() and log.read_text().count("\n") >= 2):  # two steps done: mid-run
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < 300
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("training interrupted by SIGTERM at step ") and "--resume" in line
    step = int(line.split("at step ")[1].split()[0])
    assert 2 <= step < steps and (stopped / "checkpoints" / f"step_{step:08d}").is_dir()
    assert "Traceback" not in err
    h.cli("train-student", "--out", stopped, *_args(teacher, data, steps), "--resume")
    assert _same(ref, stopped)
    assert [json.loads(x)["loss"] for x in (stopped / "log.jsonl").read_text().splitlines()] == \
        [json.loads(x)["loss"] for x in (ref / "log.jsonl").read_text().splitlines()]


def test_two_processes_resume_bitwise_equal(distilled, tmp_path):
    """Two ranks, each its own files (`split_dataset_by_node`) and its own data position in each checkpoint."""
    teacher, data = distilled
    env = dict(os.environ, PYTHONPATH=str(REPO), ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1")

    def run(out: Path, *extra: str) -> None:
        res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                              "-m", "pipelines.cli", "train-student", "--out", str(out),
                              *map(str, _args(teacher, data, 4)), "--save-every", "2", *extra],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]

    ref, cut = tmp_path / "ref", tmp_path / "cut"
    run(ref)
    assert {p.name for p in (ref / "checkpoints" / "step_00000002").glob("data_state_*.pt")} == {
        "data_state_0.pt", "data_state_1.pt"}
    shutil.copytree(ref, cut)
    shutil.rmtree(cut / "checkpoints" / "step_00000004")  # as if killed after the step-2 checkpoint
    (cut / "model.safetensors").unlink()
    run(cut, "--resume")
    assert _same(ref, cut)
