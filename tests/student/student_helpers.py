"""Shared builders for the student/teacher stage tests: a tiny shapes world, a tiny teacher made by the real
`narvl-pipe train-teacher`, and a distilled dataset made by the real `distill.run`."""
from __future__ import annotations

from pathlib import Path

import torch
from typer.testing import CliRunner

TINY_TEACHER = ["--arch", "tiny", "--d-model", "32", "--layers", "1", "--heads", "2", "--resnet-type", "resnet18",
                "--resolution", "32", "--report-to", "none"]


def cli(*args: str):
    """Run `narvl-pipe ARGS` in-process; raise with the output if it failed."""
    from pipelines.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exit_code != 0:
        raise AssertionError(f"narvl-pipe {' '.join(map(str, args))} failed ({result.exit_code}):\n{result.output}"
                             ) from result.exception
    return result


def make_world(root: Path, n_train: int = 24, n_val: int = 8) -> Path:
    from distill.shapes import ShapesConfig, write_shapes

    return Path(write_shapes(root / "world", ShapesConfig(n_train=n_train, n_val=n_val, n_test=4, size=32)))


def make_teacher(world: Path, out: Path, task: str = "caption", steps: int = 2, *extra: str) -> Path:
    cli("train-teacher", "--task", task, "--data", world, "--out", out, *TINY_TEACHER, "--max-steps", steps,
        "--batch-size", "8", "--lr", "1e-3", "--eval-limit", "4", *extra)
    return out


def make_distilled(teacher: Path, world: Path, out: Path, task: str = "caption", limit: int = 16) -> Path:
    from distill.run import DistillConfig, run_distill

    run_distill(DistillConfig(task=task, teacher=str(teacher), data=str(world), out=str(out), batch_size=8,
                              num_beams=2, max_new_tokens=8, limit=limit, num_workers=0, shard_size=8))
    return out


def make_student(teacher: Path, out: Path, task: str = "caption", num_queries: int = 8,
                 weight_std: float | None = None) -> Path:
    """A NARVL student folder initialised from `teacher` (seed 0). `weight_std` redraws every matrix outside the
    image stem with that std: an untrained student then gives outputs that depend on the image and the prompt."""
    from distill.ofa import OFAModel
    from distill.ofa.processing_ofa import load_ofa_processor
    from student.model_folder import save_model_folder
    from student.modeling_narvl import NARVLModel

    torch.manual_seed(0)
    student = NARVLModel.from_ofa(OFAModel.from_pretrained(str(teacher)), num_queries=num_queries, task=task)
    if weight_std is not None:
        with torch.no_grad():
            for name, p in student.named_parameters():
                if p.dim() >= 2 and "embed_images" not in name:
                    p.normal_(0.0, weight_std)
    save_model_folder(student, load_ofa_processor(teacher), out)
    return out


def interrupted_then_resumed(command: str, ref: Path, out: Path, *args: str) -> float:
    """Run `narvl-pipe COMMAND --out OUT ARGS`, undo its end as a crash after the step-2 checkpoint would (the step-4
    checkpoint and the final model removed), resume it, and return the max weight difference from `ref`'s model."""
    import shutil

    from safetensors.torch import load_file

    cli(command, "--out", out, *args)
    shutil.rmtree(out / "checkpoints" / "step_00000004")
    (out / "model.safetensors").unlink()
    cli(command, "--out", out, *args, "--resume")
    a, b = load_file(ref / "model.safetensors"), load_file(out / "model.safetensors")
    return max((a[k] - b[k]).abs().max().item() for k in a)
