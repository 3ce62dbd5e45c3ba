"""`narvl-pipe train-student`, `evaluate` and `predict`: thin layers over `student.train_student` and
`student.evaluate`, their options generated from `StudentTrainConfig`, `EvalConfig` and `PredictConfig`."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import typer

from distill.errors import UserError
from distill.outputs import check_output_dir, check_output_file
from distill.tasks import get_task
from pipelines.options import Opt, config_command, model_opts, parse_fields, train_opts
from student.eval_config import EvalConfig, PredictConfig
from student.evaluate import evaluate as run_evaluate, predict as run_predict
from student.train_student import StudentTrainConfig, train_student as run_train_student


@config_command(StudentTrainConfig, train_opts("student", StudentTrainConfig))
def train_student(cfg: StudentTrainConfig) -> None:
    """Train a NARVL student with Query-CTC on teacher targets (KD) or raw references.

    Unset training options take NARVL's official script for the task and the --init's size (student/presets.py);
    train_config.json records the resolved values and the script they came from.
    """
    check_output_dir(cfg.output_dir)  # a file or a read-only folder: one line now, not a traceback after the load
    result = run_train_student(cfg)
    if result.is_main_process:
        metrics = " ".join(f"{k}={v:.4g}" for k, v in result.eval_metrics.items()) or "no evaluation"
        last = result.history[-1] if result.history else {}
        typer.echo(f"student {cfg.task}: step {result.step}, last loss {last.get('loss', float('nan')):.4f}, "
                   f"infeasible samples {int(last.get('total_n_infeasible', 0))}, {metrics} -> {cfg.output_dir}")


@config_command(EvalConfig, model_opts())
def evaluate(cfg: EvalConfig,
             json_out: Optional[str] = typer.Option(None, "--json", help="Also write the result as JSON.")) -> None:
    """Score a model with the task metric, print it with the latency per sample, and write predictions."""
    for path in filter(None, (cfg.out, json_out)):  # before the model loads
        check_output_file(path)

    result = run_evaluate(cfg)
    typer.echo(result.line())
    if json_out:
        with open(json_out, "w") as f:
            json.dump(result.to_dict(), f, indent=1)


PREDICT_OPTS = {k: v for k, v in model_opts().items() if k != "columns"} | {
    "fields": Opt(flag="--field", metavar="NAME=VALUE", parse=(list[str], parse_fields),
                  help="A text field of the task by name, e.g. premise=two shapes (repeatable)."),
}


@config_command(PredictConfig, PREDICT_OPTS)
def predict(cfg: PredictConfig) -> None:
    """Print the caption, answer, box or label for one image."""
    if Path(cfg.image).is_dir():
        raise UserError(f"--image {cfg.image} is a folder: pass one image file (evaluate --data scores a folder)")
    result = run_predict(cfg)
    line, note = prediction_lines(cfg.task, result)
    typer.echo(line)
    if note:
        typer.echo(note, err=True)


def prediction_lines(task: str, result) -> tuple[str, str | None]:
    """What `predict` prints on stdout (the prediction; '' when empty) and, for an empty one, a note for stderr."""
    shown = get_task(task).prediction_text(result.prediction, result.output or "")
    if shown:
        return shown, None
    raw = (result.output or "").strip()
    what = f"its output {raw!r} holds no {task} answer" if raw else "the model decoded no tokens"
    return "", (f"note: empty prediction ({what}); an under-trained model does this: check its training loss, "
                "or score it with `narvl-pipe evaluate`")
