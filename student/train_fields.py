"""Field groups that the trainer configs share, each field declared once: mixed into `TrainConfig` and the
`StudentTrainConfig` / `TeacherTrainConfig` built on it (flat attribute access, `cfg.eval_split`), and so generated
once as `train-student` and `train-teacher` options.

`RecipeFields` are the fields an official recipe sets (`student.presets.Recipe` is one of them with its script's
values). Unset (None) in a user's config, they take the recipe for the task and size (`student.presets.resolve`),
and what a recipe leaves unset takes `TRAINER_DEFAULTS` in the trainer.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = ["DropWorstFields", "EvalFields", "RecipeFields", "TRAINER_DEFAULTS", "TrainDataFields",
           "with_trainer_defaults"]


@dataclass(kw_only=True)
class RecipeFields:
    """The optimisation fields an official recipe sets; None: the recipe's (then the trainer's default)."""

    batch_size: int | None = None
    """Global batch per optimizer step, summed over processes and accumulation steps (default: the official
    script's for the task and size)."""
    per_device_batch_size: int | None = None
    """Largest micro-batch per process (default: the script's per-GPU batch); accumulation makes up the rest."""
    epochs: float | None = None
    """Training length in passes over the training samples, `ceil(epochs * samples / batch_size)` steps (default:
    the script's); `max_steps` overrides. A caption source listing several captions per row counts one sample per
    caption, as OFA's stage-1 TSV does (`train_config.json` `epoch`)."""
    max_steps: int | None = None
    """Number of optimizer steps (default: `epochs` passes; the script's for scripts that count updates)."""
    lr: float | None = None
    """Peak learning rate (default: the script's; NARVL 1e-5 caption, 5e-5 VQA/grounding/entailment)."""
    warmup_ratio: float | None = None
    """Fraction of the steps in linear warmup (default: the script's)."""
    lr_end: float | None = None
    """Learning rate reached at the end of the polynomial decay (default: the script's, fairseq's
    `end_learning_rate` 0)."""
    lr_decay_steps: int | None = None
    """Steps over which the polynomial decay runs, fairseq's `total_num_update` (default: the run's length; NARVL's
    VQA-huge script, warmup 0, keeps fairseq's 1,000,000, so its rate stays near the peak)."""
    weight_decay: float | None = None
    """AdamW weight decay, not applied to biases and norm weights (default: the script's)."""
    drop_path: float | None = None
    """Encoder and decoder drop-path rate, active in training only (default: the script's)."""
    freeze_embeddings: bool | None = None
    """Freeze the token embeddings with the tied output projection and NARVL's blank row (default: the
    script's)."""
    ema_decay: float | None = None
    """fp32 EMA of the weights with this decay, evaluated and saved as the model (fairseq `--uses-ema --store-ema
    --ema-fp32`); 0 turns it off (default: the script's)."""


TRAINER_DEFAULTS = RecipeFields(batch_size=32, lr=5e-5, warmup_ratio=0.06, lr_end=0.0, weight_decay=0.01,
                                freeze_embeddings=False)
"""What the trainer uses for a field that neither the user nor a recipe set (a plain `TrainConfig`)."""


def with_trainer_defaults(cfg: Any) -> Any:
    """`cfg` with its unset (None) recipe fields taken from `TRAINER_DEFAULTS` (those that have one)."""
    values = {f.name: getattr(TRAINER_DEFAULTS, f.name) for f in fields(RecipeFields)
              if getattr(cfg, f.name) is None and getattr(TRAINER_DEFAULTS, f.name) is not None}
    return replace(cfg, **values) if values else cfg


@dataclass(kw_only=True)
class TrainDataFields:
    """Which rows train, and where the init comes from."""

    split: str = "train"
    """Training split, or a union such as `train+restval` (a distilled folder is one split: ignored there)."""
    limit: int | None = None
    """Train on the first N rows only."""
    init_revision: str | None = None
    """Hub revision of `init` (ignored for a local folder)."""
    benchmark: str | None = None
    """The benchmark `data` holds, when its task has several official recipes: grounding `refcoco` (default),
    `refcoco+` or `refcocog`, whose scripts have their own epochs, rate and drop-path."""


@dataclass(kw_only=True)
class EvalFields:
    """The evaluation during and after training (the task metric on a held-out split)."""

    eval_data: str | None = None
    """Evaluation source (default: `data`; for a student trained on a distilled dataset, the source it was distilled
    from, read in its manifest)."""
    eval_split: str = "validation"
    """Evaluation split; training goes on without evaluation, with a note, when the default source lacks it."""
    eval_limit: int | None = 200
    """Rows scored per evaluation."""
    eval_num_beams: int | None = None
    """Beam size of evaluation (default: a student's greedy CTC, the paper's setting; a teacher's task setting)."""
    eval_batch_size: int = 16
    """Batch size of evaluation."""


@dataclass(kw_only=True)
class DropWorstFields:
    """OFA's drop-worst of the AR teacher's criterion (`criterions/label_smoothed_cross_entropy.py`)."""

    drop_worst_ratio: float | None = None
    """Leave out this fraction of the highest-loss target tokens of each batch (OFA's `--drop-worst-ratio`;
    default: the script's, caption 0.2, else 0)."""
    drop_worst_after: int | None = None
    """Only after this many updates (OFA's `--drop-worst-after`; default: the script's, caption base 6000)."""
