"""`narvl-pipe train-student`, `evaluate` and `predict`: thin layers over `student.train_student` and
`student.evaluate`."""
from __future__ import annotations

from typing import Optional

import typer

from student.presets import option_help as _recipe


def _official(field: str, what: str) -> str:
    return f"{what} (default: the official script's for the task and size: {_recipe('student', field)})."


def train_student(
    task: str = typer.Option(..., "--task", help="caption, vqa, grounding or entailment."),
    data: str = typer.Option(..., "--data", help="Distilled dataset (folder or Hub id); a canonical source with --target-column references."),
    init: str = typer.Option(..., "--init", help="OFA checkpoint (folder or Hub id, e.g. OFA-Sys/ofa-base), or a NARVL one to continue."),
    init_revision: Optional[str] = typer.Option(None, "--init-revision", help="Hub revision of --init."),
    out: str = typer.Option(..., "--out", help="Output folder: the student (save_pretrained + tokenizer + image processor)."),
    num_queries: Optional[int] = typer.Option(None, "--num-queries", help="Decoder queries N (task default)."),
    target_column: str = typer.Option("target", "--target-column", help="target (teacher outputs, KD) or references (raw labels)."),
    min_teacher_logprob: Optional[float] = typer.Option(None, "--min-teacher-logprob", help="Drop rows with a lower teacher log-prob."),
    max_target_len: Optional[int] = typer.Option(None, "--max-target-len", help="Drop rows with a longer teacher target (EOS included)."),
    split: str = typer.Option("train", "--split", help="Split of --data, or a union such as train+restval (a distilled folder is one split)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Train on the first N rows."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer folder (default: --init's)."),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="Image side (default: --init's processor)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps; overrides --epochs."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help=_official("epochs", "Training length in epochs")),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help=_official("batch_size", "Global batch per step (all processes and accumulation)")),
    per_device_batch_size: Optional[int] = typer.Option(None, "--per-device-batch-size", help=_official("per_device_batch_size", "Largest micro-batch per process; gradient accumulation makes up --batch-size")),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum", help="Gradient accumulation steps (default: from --per-device-batch-size and the process count)."),
    lr: Optional[float] = typer.Option(None, "--lr", help=_official("lr", "Peak learning rate")),
    warmup_ratio: Optional[float] = typer.Option(None, "--warmup-ratio", help=_official("warmup_ratio", "Fraction of steps in linear warmup")),
    lr_end: Optional[float] = typer.Option(None, "--lr-end", help=_official("lr_end", "Learning rate at the last step")),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help=_official("weight_decay", "AdamW weight decay")),
    drop_path: Optional[float] = typer.Option(None, "--drop-path", help=_official("drop_path", "Encoder and decoder drop-path rate")),
    freeze_embeddings: Optional[bool] = typer.Option(None, "--freeze-embeddings/--train-embeddings", help=_official("freeze_embeddings", "Token embeddings, tied output projection and blank row")),
    ema_decay: Optional[float] = typer.Option(None, "--ema-decay", help=_official("ema_decay", "fp32 EMA of the weights, evaluated and saved; 0 = off")),
    label_smoothing: Optional[float] = typer.Option(None, "--label-smoothing", help="Default: the task's (0.1, entailment 0)."),
    dropout: Optional[float] = typer.Option(None, "--dropout", help="Override the OFA init's dropout."),
    mixed_precision: str = typer.Option("auto", "--mixed-precision", help="auto (CUDA: bf16 where supported, else fp16, as the scripts' fp16; CPU: no), no, fp16 or bf16."),
    seed: int = typer.Option(0, "--seed", help="Seed of the new weights, data order, reference choice and dropout."),
    eval_data: Optional[str] = typer.Option(None, "--eval-data", help="Evaluation source (default: the distill manifest's source)."),
    eval_split: str = typer.Option("validation", "--eval-split", help="Evaluation split."),
    eval_limit: Optional[int] = typer.Option(200, "--eval-limit", help="Rows per evaluation."),
    eval_every: int = typer.Option(0, "--eval-every", help="Evaluate every N steps (0: at the end only)."),
    save_every: int = typer.Option(0, "--save-every", help="Checkpoint every N steps (0: never)."),
    keep_checkpoints: int = typer.Option(2, "--keep-checkpoints", help="Checkpoints kept."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in --out."),
    num_workers: int = typer.Option(0, "--num-workers", help="DataLoader workers."),
    report_to: str = typer.Option("auto", "--report-to", help="auto (tensorboard if installed), none, or a tracker."),
) -> None:
    """Train a NARVL student with Query-CTC on teacher targets (KD) or raw references.

    Unset training options take NARVL's official script for the task and the --init's size (student/presets.py);
    train_config.json records the resolved values and the script they came from.
    """
    from distill.outputs import check_output_dir
    from student.train_student import StudentTrainConfig, train_student as run

    check_output_dir(out)  # a file or a read-only folder: one line now, not a traceback after the model loads

    cfg = StudentTrainConfig(
        output_dir=out, task=task, data=data, init=init, num_queries=num_queries, target_column=target_column,
        min_teacher_logprob=min_teacher_logprob, max_target_len=max_target_len, split=split, limit=limit,
        tokenizer=tokenizer, resolution=resolution, max_steps=max_steps, epochs=epochs, batch_size=batch_size,
        per_device_batch_size=per_device_batch_size, grad_accum=grad_accum, lr_end=lr_end, drop_path=drop_path,
        freeze_embeddings=freeze_embeddings, ema_decay=ema_decay, init_revision=init_revision,
        lr=lr, warmup_ratio=warmup_ratio, weight_decay=weight_decay, label_smoothing=label_smoothing,
        dropout=dropout, mixed_precision=mixed_precision, seed=seed, eval_data=eval_data, eval_split=eval_split, eval_limit=eval_limit,
        eval_every=eval_every, save_every=save_every, keep_checkpoints=keep_checkpoints, resume=resume,
        num_workers=num_workers, report_to=report_to,
    )
    result = run(cfg)
    if result.is_main_process:
        metrics = " ".join(f"{k}={v:.4g}" for k, v in result.eval_metrics.items()) or "no evaluation"
        last = result.history[-1] if result.history else {}
        typer.echo(f"student {task}: step {result.step}, last loss {last.get('loss', float('nan')):.4f}, "
                   f"infeasible samples {int(last.get('total_n_infeasible', 0))}, {metrics} -> {out}")


def evaluate(
    model: str = typer.Option(..., "--model", help="NARVL student or OFA teacher: folder or Hub id."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision of --model."),
    task: str = typer.Option(..., "--task", help="caption, vqa, grounding or entailment."),
    data: str = typer.Option(..., "--data", help="Evaluation source (any SRC)."),
    split: str = typer.Option("validation", "--split", help="Split of --data."),
    batch_size: int = typer.Option(16, "--batch-size", help="Batch size (latency is per sample at this size)."),
    num_beams: Optional[int] = typer.Option(None, "--num-beams", help="AR: beams (task default); NARVL: CTC prefix beam (default greedy)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N rows."),
    out: Optional[str] = typer.Option(None, "--out", help="Write predictions as JSONL."),
    answers: Optional[str] = typer.Option(None, "--answers", help="VQA candidate answers for the AR teacher (required): OFA's trainval_ans2label.pkl, a JSON list, or one per line."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Also write the result as JSON."),
) -> None:
    """Score a model with the task metric, print it with the latency per sample, and write predictions."""
    import json

    from distill.outputs import check_output_file
    from student.evaluate import evaluate as run

    for path in filter(None, (out, json_out)):  # before the model loads
        check_output_file(path)

    result = run(model, task, data, split=split, batch_size=batch_size, num_beams=num_beams, limit=limit, out=out,
                 answers=answers, revision=revision)
    typer.echo(result.line())
    if json_out:
        with open(json_out, "w") as f:
            json.dump(result.to_dict(), f, indent=1)


def predict(
    model: str = typer.Option(..., "--model", help="NARVL student, its ONNX export (narvl-pipe export) or OFA teacher: folder or Hub id."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision of --model."),
    task: str = typer.Option(..., "--task", help="caption, vqa, grounding or entailment."),
    image: str = typer.Option(..., "--image", help="Image file."),
    text: Optional[str] = typer.Option(None, "--text", help="Question (vqa), region text (grounding) or hypothesis (entailment)."),
    premise: Optional[str] = typer.Option(None, "--premise", help="Entailment premise (optional)."),
    num_beams: Optional[int] = typer.Option(None, "--num-beams", help="Beam size (see evaluate)."),
    answers: Optional[str] = typer.Option(None, "--answers", help="VQA candidate answers (AR teacher)."),
) -> None:
    """Print the caption, answer, box or label for one image."""
    from pathlib import Path

    from distill.errors import UserError
    from student.evaluate import predict as run

    if Path(image).is_dir():
        raise UserError(f"--image {image} is a folder: pass one image file (evaluate --data scores a folder)")
    result = run(model, task, image, text=text, premise=premise, num_beams=num_beams, answers=answers,
                 revision=revision)
    line, note = prediction_lines(task, result)
    typer.echo(line)
    if note:
        typer.echo(note, err=True)


def prediction_lines(task: str, result) -> tuple[str, str | None]:
    """What `predict` prints on stdout (the prediction; '' when empty) and, for an empty one, a note for stderr."""
    if task == "grounding":
        box = result.prediction
        return ("no box (the model did not output exactly 4 bins)" if box is None
                else " ".join(f"{v:.1f}" for v in box)), None
    if result.prediction not in (None, ""):
        return str(result.prediction), None
    raw = (result.output or "").strip()
    what = f"its output {raw!r} holds no {task} answer" if raw else "the model decoded no tokens"
    return "", (f"note: empty prediction ({what}); an under-trained model does this: check its training loss, "
                "or score it with `narvl-pipe evaluate`")
