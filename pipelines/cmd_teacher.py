"""`narvl-pipe train-teacher`: a thin layer over `student.train_teacher.train_teacher`."""
from __future__ import annotations

from typing import Optional

import typer

from student.presets import option_help as _recipe


def _official(field: str, what: str) -> str:
    return f"{what} (default: the official script's for the task and size: {_recipe('teacher', field)})."


def train_teacher(
    task: str = typer.Option(..., "--task", help="caption, vqa, grounding or entailment."),
    data: str = typer.Option(..., "--data", help="Training source (save_to_disk folder, parquet, TSV, ... or Hub id)."),
    out: str = typer.Option(..., "--out", help="Output folder: the teacher (save_pretrained + tokenizer + image processor)."),
    init: Optional[str] = typer.Option(None, "--init", help="OFA checkpoint to fine-tune, folder or Hub id (exclusive with --arch)."),
    init_revision: Optional[str] = typer.Option(None, "--init-revision", help="Hub revision of --init."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Build a new OFA: tiny (33M params, 4+4 layers, d_model 256, "
                                       "ResNet-50 stem, 256 px), medium (93M), base (180M, 384 px), large (470M) or "
                                       "huge (930M); px: the default --resolution (else the task's, 480)."),
    d_model: Optional[int] = typer.Option(None, "--d-model", help="Override the arch's width."),
    layers: Optional[int] = typer.Option(None, "--layers", help="Override the encoder and decoder depth."),
    heads: Optional[int] = typer.Option(None, "--heads", help="Override the attention heads."),
    ffn_dim: Optional[int] = typer.Option(None, "--ffn-dim", help="Override the FFN width (default 4 x d_model)."),
    resnet_type: Optional[str] = typer.Option(None, "--resnet-type", help="resnet18, resnet50, resnet101, resnet152."),
    config_json: Optional[str] = typer.Option(None, "--config-json", help="JSON file of OFAConfig fields, applied last."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer folder for --arch (default DATA/tokenizer)."),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="Image side (default: --init's; with --arch "
                                             "tiny 256, base 384, else the task's: 480, grounding 512)."),
    split: str = typer.Option("train", "--split", help="Training split, or a union such as train+restval."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Train on the first N rows."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps; overrides --epochs."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help=_official("epochs", "Training length in epochs")),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help=_official("batch_size", "Global batch per step (all processes and accumulation)")),
    per_device_batch_size: Optional[int] = typer.Option(None, "--per-device-batch-size", help=_official("per_device_batch_size", "Largest micro-batch per process; gradient accumulation makes up --batch-size")),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum", help="Gradient accumulation steps (default: from --per-device-batch-size and the process count)."),
    lr: Optional[float] = typer.Option(None, "--lr", help=_official("lr", "Peak learning rate") + " From scratch "
                                       "(--arch) start near 1e-4: higher rates can settle on fluent captions that "
                                       "ignore the image (docs/DEMO_NOTES.md)."),
    warmup_ratio: Optional[float] = typer.Option(None, "--warmup-ratio", help=_official("warmup_ratio", "Fraction of steps in linear warmup")),
    lr_end: Optional[float] = typer.Option(None, "--lr-end", help=_official("lr_end", "Learning rate at the last step")),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help=_official("weight_decay", "AdamW weight decay")),
    drop_path: Optional[float] = typer.Option(None, "--drop-path", help=_official("drop_path", "Encoder and decoder drop-path rate")),
    freeze_embeddings: Optional[bool] = typer.Option(None, "--freeze-embeddings/--train-embeddings", help=_official("freeze_embeddings", "Token embeddings, tied output projection and blank row")),
    ema_decay: Optional[float] = typer.Option(None, "--ema-decay", help=_official("ema_decay", "fp32 EMA of the weights, evaluated and saved; 0 = off")),
    label_smoothing: Optional[float] = typer.Option(None, "--label-smoothing", help="Default: the task's (0.1, entailment 0)."),
    mixed_precision: str = typer.Option("auto", "--mixed-precision", help="auto (CUDA: bf16 where supported, else fp16, as the scripts' fp16; CPU: no), no, fp16 or bf16."),
    seed: int = typer.Option(0, "--seed", help="Seed of init, data order and dropout."),
    eval_data: Optional[str] = typer.Option(None, "--eval-data", help="Evaluation source (default: --data)."),
    eval_split: str = typer.Option("validation", "--eval-split", help="Evaluation split."),
    eval_limit: Optional[int] = typer.Option(200, "--eval-limit", help="Rows per evaluation."),
    eval_every: int = typer.Option(0, "--eval-every", help="Evaluate every N steps (0: at the end only)."),
    eval_num_beams: Optional[int] = typer.Option(None, "--eval-num-beams", help="Beam size of evaluation (task default)."),
    save_every: int = typer.Option(0, "--save-every", help="Checkpoint every N steps (0: never)."),
    keep_checkpoints: int = typer.Option(2, "--keep-checkpoints", help="Checkpoints kept."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in --out."),
    num_workers: int = typer.Option(0, "--num-workers", help="DataLoader workers."),
    report_to: str = typer.Option("auto", "--report-to", help="auto (tensorboard if installed), none, or a tracker."),
) -> None:
    """Fine-tune (or train from scratch with --arch) the autoregressive OFA teacher with label-smoothed CE.

    Unset training options take OFA's official script for the task and size (student/presets.py); a model built with
    --arch does not freeze its embeddings unless --freeze-embeddings is given.
    """
    from distill.outputs import check_output_dir
    from student.train_teacher import TeacherTrainConfig, train_teacher as run

    check_output_dir(out)  # a file or a read-only folder: one line now, not a traceback after the model loads

    cfg = TeacherTrainConfig(
        output_dir=out, task=task, data=data, init=init, arch=arch, d_model=d_model, layers=layers, heads=heads,
        ffn_dim=ffn_dim, resnet_type=resnet_type, config_json=config_json, tokenizer=tokenizer, resolution=resolution,
        split=split, limit=limit, max_steps=max_steps, epochs=epochs, batch_size=batch_size,
        per_device_batch_size=per_device_batch_size, grad_accum=grad_accum, lr_end=lr_end, drop_path=drop_path,
        freeze_embeddings=freeze_embeddings, ema_decay=ema_decay, init_revision=init_revision, lr=lr,
        warmup_ratio=warmup_ratio, weight_decay=weight_decay, label_smoothing=label_smoothing,
        mixed_precision=mixed_precision, seed=seed, eval_data=eval_data, eval_split=eval_split, eval_limit=eval_limit,
        eval_every=eval_every, eval_num_beams=eval_num_beams, save_every=save_every, keep_checkpoints=keep_checkpoints,
        resume=resume, num_workers=num_workers, report_to=report_to,
    )
    result = run(cfg)
    if result.is_main_process:
        metrics = " ".join(f"{k}={v:.4g}" for k, v in result.eval_metrics.items()) or "no evaluation"
        last = result.history[-1]["loss"] if result.history else float("nan")
        typer.echo(f"teacher {task}: step {result.step}, last loss {last:.4f}, {metrics} -> {out}")
