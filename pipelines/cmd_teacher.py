"""`narvl-pipe train-teacher`: a thin layer over `student.train_teacher.train_teacher`, its options generated from
`TeacherTrainConfig`."""
from __future__ import annotations

import typer

from distill.outputs import check_output_dir
from pipelines.options import Opt, config_command, train_opts
from student.presets import OFA_ARCHS
from student.train_teacher import TeacherTrainConfig, train_teacher as run_train_teacher

_TRAIN = train_opts("teacher", TeacherTrainConfig)
OPTS = {
    **_TRAIN,
    "arch": Opt(choices=tuple(OFA_ARCHS), metavar="<size>",
                help="Build a new OFA: tiny (33M params, 4+4 layers, d_model 256, ResNet-50 stem, 256 px), medium "
                "(93M), base (180M, 384 px), large (470M) or huge (930M); px: the default `resolution` (else the "
                "task's, 480). Exclusive with `init`."),
    "lr": Opt(more=_TRAIN["lr"].more + " From scratch (`arch`) start near 1e-4: higher "
              "rates can settle on fluent captions that ignore the image (docs/DEMO_NOTES.md)."),
}


@config_command(TeacherTrainConfig, OPTS)
def train_teacher(cfg: TeacherTrainConfig) -> None:
    """Fine-tune (or train from scratch with --arch) the autoregressive OFA teacher with label-smoothed CE.

    Unset training options take OFA's official script for the task and size (student/presets.py); a model built with
    --arch does not freeze its embeddings unless --freeze-embeddings is given.
    """
    check_output_dir(cfg.output_dir)  # a file or a read-only folder: one line now, not a traceback after the load
    result = run_train_teacher(cfg)
    if result.is_main_process:
        metrics = " ".join(f"{k}={v:.4g}" for k, v in result.eval_metrics.items()) or "no evaluation"
        last = result.history[-1]["loss"] if result.history else float("nan")
        typer.echo(f"teacher {cfg.task}: step {result.step}, last loss {last:.4f}, {metrics} -> {cfg.output_dir}")
