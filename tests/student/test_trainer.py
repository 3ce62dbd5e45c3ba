"""The Accelerate trainer: data order, exact resume after SIGKILL, and 1 vs 2 processes (tests/student/trainer_toy.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from student.trainer import StepBatchSampler, latest_checkpoint
from tests.proc_helpers import alive

TOY = Path(__file__).with_name("trainer_toy.py")


def _env() -> dict[str, str]:
    # One thread: CPU float reductions then have one fixed order, so "exact" is well defined.
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _run(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOY), *args], env=_env(), capture_output=True, text=True, check=check)


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


def _max_weight_diff(a: Path, b: Path) -> float:
    wa, wb = load_file(a / "final.safetensors"), load_file(b / "final.safetensors")
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def test_sampler_is_a_function_of_the_step():
    """Processes x accumulation split one global batch; a resumed sampler yields the tail of the full one."""
    full = [b for b in StepBatchSampler(10, 4, 1, 0, 1, seed=3, start_step=0, max_steps=7)]
    assert len(full) == 7 and all(len(b) == 4 for b in full)
    # Every epoch is a permutation: the stream of the first 10 draws covers each row once.
    rows = [r for b in full for r, _ in b]
    assert sorted(rows[:10]) == list(range(10)) and sorted(rows[10:20]) == list(range(10))
    ranks = [list(StepBatchSampler(10, 4, 2, r, 2, seed=3, start_step=0, max_steps=7)) for r in range(2)]
    for step in range(7):
        # micro m of rank r = chunk (m * world + r): reassemble the global batch in order.
        merged = ranks[0][2 * step] + ranks[1][2 * step] + ranks[0][2 * step + 1] + ranks[1][2 * step + 1]
        assert merged == full[step]
    assert list(StepBatchSampler(10, 4, 1, 0, 1, seed=3, start_step=4, max_steps=7)) == full[4:]


def test_refuses_to_overwrite_an_earlier_run(tmp_path):
    from distill.errors import UserError
    from student.trainer import TrainConfig, train

    ckpt = tmp_path / "checkpoints" / "step_00000003"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text('{"step": 3}')
    with pytest.raises(UserError, match="`resume`"):
        train(torch.nn.Linear(2, 2), None, [0], TrainConfig(output_dir=str(tmp_path), max_steps=1))


def test_runs_of_one_process_may_differ_in_precision(tmp_path):
    """Pipeline stages run in one process (`--jobs 1`): a bf16 stage after an fp32 one trains in bf16 (Accelerate's
    state singleton refused it)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from trainer_toy import Toy, ToyData, collate

    from student.trainer import TrainConfig, train

    def loss_fn(m, batch, step):
        return torch.nn.functional.cross_entropy(m(batch["ids"]), batch["label"]), {}

    for precision in ("no", "bf16", "no"):
        dtypes: list[torch.dtype] = []
        model = Toy()  # the dtype its hidden layer computes in (Accelerate returns the outputs in fp32)
        model.hidden.register_forward_hook(lambda mod, args, out: dtypes.append(out.dtype))
        cfg = TrainConfig(output_dir=str(tmp_path / f"{precision}-{len(list(tmp_path.iterdir()))}"), max_steps=2, batch_size=4,
                          lr=1e-2, report_to="none", mixed_precision=precision)
        train(model, loss_fn, ToyData(), cfg, collate_fn=collate)
        # the last two calls are the two steps (a CPU run's preflight calls it first, outside the Accelerator)
        assert dtypes[-2:] == [torch.bfloat16 if precision == "bf16" else torch.float32] * 2


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    _run(["--out", str(ref), "--steps", "20", "--save-every", "5"])
    # SIGKILL in the 13th step: checkpoints 5 and 10 exist, steps 11-12 were logged and must be dropped.
    proc = _run(["--out", str(killed), "--steps", "20", "--save-every", "5", "--kill-at-call", "13"], check=False)
    assert proc.returncode == -9
    assert latest_checkpoint(killed).name == "step_00000010"
    assert not (killed / "final.safetensors").exists()
    _run(["--out", str(killed), "--steps", "20", "--save-every", "5", "--resume"])
    diff = _max_weight_diff(ref, killed)
    print(f"resume max abs weight diff: {diff:.3g}")
    assert diff <= 1e-6
    assert _losses(killed) == pytest.approx(_losses(ref), abs=1e-6)
    # keep_checkpoints=2, and no temporary folder is left behind.
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step_00000015", "step_00000020"]


def test_sigkill_leaves_no_dataloader_worker_behind(tmp_path):
    """`kill -9` of a training run with DataLoader workers: the workers exit with it (they hold the run's inherited
    file descriptors and memory), and the run resumes as without workers."""
    out = tmp_path / "killed"
    proc = _run(["--out", str(out), "--steps", "20", "--save-every", "5", "--kill-at-call", "13",
                 "--num-workers", "2"], check=False)
    assert proc.returncode == -9
    workers = [int(k) for k in (out / "workers.txt").read_text().split()]
    assert len(workers) == 2
    deadline = time.time() + 30
    while any(map(alive, workers)) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(map(alive, workers)), "DataLoader workers outlived the killed run"


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    """Same global batch (8): 1 process x 2 accumulation steps vs 2 processes (DDP, gloo). Tolerance 1e-5."""
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--steps", "20", "--batch-size", "8", "--dropout", "0"]  # dropout masks differ per rank by design
    _run(["--out", str(one), "--grad-accum", "2", *args])
    # --standalone: torchrun's own rendezvous picks a free port (no pick-then-bind race).
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(TOY), "--out", str(two), *args],
        env={**_env(), "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    l1, l2 = _losses(one), _losses(two)
    assert len(l1) == len(l2) == 20
    loss_diff = max(abs(a - b) for a, b in zip(l1, l2))
    weight_diff = _max_weight_diff(one, two)
    print(f"1 vs 2 processes: max loss diff {loss_diff:.3g}, max weight diff {weight_diff:.3g}")
    assert loss_diff <= 1e-5 and weight_diff <= 1e-5
    assert l1[-1] < l1[0]  # it did learn something
    # Periodic evaluation sharded over the 2 processes and gathered gives the 1-process metric.
    evals = [[json.loads(x).get("eval/accuracy") for x in (d / "log.jsonl").read_text().splitlines()] for d in (one, two)]
    assert evals[0][9] is not None and evals[0] == evals[1]
