"""The official fine-tuning recipes, per trainer x task x model size, resolved in one place.

Students follow NARVL's scripts (amazon-science/NARVL `run_scripts/{caption,vqa,refcoco,snli_ve}_nat/train_*.sh`,
read at commit 1ed7fc3); teachers follow OFA's (OFA-Sys/OFA `run_scripts/{caption,vqa,refcoco,snli_ve}/train_*.sh`,
read at a36b91c). The global batch is what one optimizer step sees in the script: per-GPU `batch_size` x
`update_freq` x GPUs (x workers). Every script also uses AdamW (0.9, 0.999), eps 1e-8, clip 1.0, fp16 and fairseq's
`polynomial_decay` (power 1, `end_learning_rate` 0), which are `TrainConfig`'s defaults.

A size without a script of its own takes the task's base recipe (or, for NARVL captioning, whose only script is the
huge one, that one); `resolve` records which script it used. Sizes are recognised from the model config
(`ofa_size`); anything else (a custom tiny model) counts as base.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from distill.tasks import TASKS

__all__ = ["OFA_ARCHS", "Recipe", "RecipeFields", "STUDENT_RECIPES", "TEACHER_RECIPES", "RECIPE_FIELDS",
           "drop_path_fields", "ofa_size", "recipe_for", "resolve", "option_help"]

OFA_ARCHS: dict[str, dict[str, Any]] = {
    "tiny": dict(encoder_layers=4, decoder_layers=4, d_model=256, heads=4, resnet_type="resnet50", params="33M",
                 resolution=256),
    "medium": dict(encoder_layers=4, decoder_layers=4, d_model=512, heads=8, resnet_type="resnet101", params="93M"),
    "base": dict(encoder_layers=6, decoder_layers=6, d_model=768, heads=12, resnet_type="resnet101", params="180M",
                 resolution=384),
    "large": dict(encoder_layers=12, decoder_layers=12, d_model=1024, heads=16, resnet_type="resnet152",
                  params="470M"),
    "huge": dict(encoder_layers=24, decoder_layers=12, d_model=1280, heads=16, resnet_type="resnet152", params="930M"),
}
"""OFA sizes (DESIGN.md section 3); the FFN is 4 x d_model. `resolution`: the image side of the OFA-Sys model card
(tiny 256, base 384), the default of a model built with `--arch`; the others use the task's (480, RefCOCO 512)."""


@dataclass(frozen=True)
class Recipe:
    """One official script's settings (the fields a `TrainConfig` / student / teacher config takes)."""

    source: str
    """The script, `repo:path`."""
    batch_size: int
    """Global batch of one optimizer step (per-GPU batch x update_freq x GPUs)."""
    per_device_batch_size: int
    """The script's per-GPU batch (gradient accumulation makes up the rest of the global batch)."""
    lr: float
    """Peak learning rate."""
    warmup_ratio: float
    """Fraction of the updates in linear warmup."""
    drop_path: float
    """Encoder and decoder drop-path rate (linearly increasing over layers)."""
    freeze_embeddings: bool
    """Freeze the token embeddings (`--freeze-encoder-embedding --freeze-decoder-embedding` with shared embeddings:
    the tied output projection too, and NARVL's blank row, which is a row of that dictionary)."""
    epochs: float | None = None
    """Passes over the training rows (`--max-epoch`)."""
    max_steps: int | None = None
    """Optimizer steps, for the scripts that count updates instead of epochs (`--total-num-update`)."""
    ema_decay: float | None = None
    """Decay of the fp32 EMA of the weights (`--uses-ema --store-ema --ema-fp32`), evaluated and saved."""
    lr_end: float = 0.0
    """Learning rate at the last update (fairseq `polynomial_decay` default)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""


@dataclass(kw_only=True)
class RecipeFields:
    """The `TrainConfig` fields an official recipe sets, unset (None) by default; mixed into the student and teacher
    configs before `TrainConfig`, so that `resolve` can tell what the user set."""

    batch_size: int | None = None
    """Global batch per optimizer step (default: the official script's for the task and size)."""
    per_device_batch_size: int | None = None
    """Largest micro-batch per process (default: the script's per-GPU batch); accumulation makes up the rest."""
    epochs: float | None = None
    """Training length in epochs (default: the script's); `max_steps` overrides."""
    lr: float | None = None
    """Peak learning rate (default: the script's)."""
    warmup_ratio: float | None = None
    """Fraction of steps in linear warmup (default: the script's)."""
    lr_end: float | None = None
    """Learning rate at the last step (default: the script's)."""
    weight_decay: float | None = None
    """AdamW weight decay (default: the script's)."""
    drop_path: float | None = None
    """Encoder and decoder drop-path rate, active in training only (default: the script's)."""
    freeze_embeddings: bool | None = None
    """Freeze the token embeddings with the tied output projection and NARVL's blank row (default: the
    script's)."""
    ema_decay: float | None = None
    """fp32 EMA of the weights, evaluated and saved as the model; 0 turns it off (default: the script's)."""


RECIPE_FIELDS = ("epochs", "batch_size", "per_device_batch_size", "lr", "warmup_ratio", "lr_end", "weight_decay",
                 "drop_path", "freeze_embeddings", "ema_decay")
"""Config fields a recipe fills when the user left them unset (None). `max_steps` too, for update-counted scripts."""

_N = "amazon-science/NARVL:run_scripts/"
_O = "OFA-Sys/OFA:run_scripts/"

STUDENT_RECIPES: dict[tuple[str, str], Recipe] = {
    ("caption", "huge"): Recipe(_N + "caption_nat/train_caption_stage1_huge_distill_from_huge_20.sh", epochs=5,
                                batch_size=2 * 8 * 8, per_device_batch_size=2, lr=1e-5, warmup_ratio=0.06,
                                drop_path=0.1, freeze_embeddings=True),
    ("vqa", "base"): Recipe(_N + "vqa_nat/train_vqa_base_6.sh", epochs=10, batch_size=4 * 16 * 8,
                            per_device_batch_size=4, lr=5e-5, warmup_ratio=0.04, drop_path=0.1,
                            freeze_embeddings=True, ema_decay=0.9999),
    ("vqa", "huge"): Recipe(_N + "vqa_nat/train_vqa_huge_6_distill_huge.sh", epochs=10, batch_size=2 * 32 * 8,
                            per_device_batch_size=2, lr=5e-5, warmup_ratio=0.0, drop_path=0.1,
                            freeze_embeddings=True, ema_decay=0.9999),
    ("grounding", "tiny"): Recipe(_N + "refcoco_nat/train_refcoco_tiny_5.sh", epochs=50, batch_size=16 * 1 * 8,
                                  per_device_batch_size=16, lr=5e-5, warmup_ratio=0.06, drop_path=0.1,
                                  freeze_embeddings=False),
    ("grounding", "base"): Recipe(_N + "refcoco_nat/train_refcoco_base_5.sh", epochs=10, batch_size=4 * 4 * 8,
                                  per_device_batch_size=4, lr=5e-5, warmup_ratio=0.06, drop_path=0.1,
                                  freeze_embeddings=False),
    ("grounding", "large"): Recipe(_N + "refcoco_nat/train_refcoco_large_5.sh", epochs=10, batch_size=1 * 16 * 8,
                                   per_device_batch_size=1, lr=3e-5, warmup_ratio=0.06, drop_path=0.2,
                                   freeze_embeddings=False),
    ("grounding", "huge"): Recipe(_N + "refcoco_nat/train_refcoco_huge_5.sh", epochs=10, batch_size=2 * 8 * 8,
                                  per_device_batch_size=2, lr=3e-5, warmup_ratio=0.06, drop_path=0.2,
                                  freeze_embeddings=False),
    ("entailment", "base"): Recipe(_N + "snli_ve_nat/train_snli_ve_base_3.sh", epochs=5, batch_size=4 * 8 * 8,
                                   per_device_batch_size=4, lr=5e-5, warmup_ratio=0.06, drop_path=0.1,
                                   freeze_embeddings=False),
    ("entailment", "huge"): Recipe(_N + "snli_ve_nat/train_snli_ve_huge_3.sh", epochs=6, batch_size=2 * 16 * 8,
                                   per_device_batch_size=2, lr=2e-5, warmup_ratio=0.06, drop_path=0.2,
                                   freeze_embeddings=False),
}
"""NARVL's scripts (the student). Captioning has only the huge script; its values are the paper's base ones too."""

TEACHER_RECIPES: dict[tuple[str, str], Recipe] = {
    ("caption", "base"): Recipe(_O + "caption/train_caption_stage1_base.sh", epochs=5, batch_size=8 * 4 * 4,
                                per_device_batch_size=8, lr=1e-5, warmup_ratio=0.06, drop_path=0.1,
                                freeze_embeddings=True),
    ("caption", "large"): Recipe(_O + "caption/train_caption_stage1.sh", epochs=2, batch_size=8 * 4 * 4,
                                 per_device_batch_size=8, lr=1e-5, warmup_ratio=0.06, drop_path=0.1,
                                 freeze_embeddings=True),
    ("vqa", "base"): Recipe(_O + "vqa/train_vqa_base_distributed.sh", epochs=15, batch_size=4 * 4 * 8 * 4,
                            per_device_batch_size=4, lr=5e-5, warmup_ratio=0.04, drop_path=0.1,
                            freeze_embeddings=True, ema_decay=0.9999),
    # Counted in updates: 40000 with 1000 warmup updates.
    ("vqa", "large"): Recipe(_O + "vqa/train_vqa_distributed.sh", max_steps=40000, batch_size=4 * 4 * 8 * 4,
                             per_device_batch_size=4, lr=5e-5, warmup_ratio=1000 / 40000, drop_path=0.2,
                             freeze_embeddings=True, ema_decay=0.9999),
    ("grounding", "base"): Recipe(_O + "refcoco/train_refcoco_base.sh", epochs=10, batch_size=4 * 8 * 4,
                                  per_device_batch_size=4, lr=5e-5, warmup_ratio=0.06, drop_path=0.1,
                                  freeze_embeddings=False),
    ("grounding", "large"): Recipe(_O + "refcoco/train_refcoco.sh", epochs=10, batch_size=4 * 8 * 4,
                                   per_device_batch_size=4, lr=3e-5, warmup_ratio=0.06, drop_path=0.2,
                                   freeze_embeddings=False),
    ("entailment", "base"): Recipe(_O + "snli_ve/train_snli_ve_base.sh", epochs=5, batch_size=4 * 8 * 8,
                                   per_device_batch_size=4, lr=5e-5, warmup_ratio=0.06, drop_path=0.1,
                                   freeze_embeddings=False),
    ("entailment", "large"): Recipe(_O + "snli_ve/train_snli_ve.sh", epochs=6, batch_size=4 * 8 * 8,
                                    per_device_batch_size=4, lr=2e-5, warmup_ratio=0.06, drop_path=0.2,
                                    freeze_embeddings=False),
}
"""OFA's scripts (the AR teacher). The values in the scripts' `for` loops are the ones that run."""

_TABLES = {"student": STUDENT_RECIPES, "teacher": TEACHER_RECIPES}


def drop_path_fields(rate: float | None) -> dict[str, float]:
    """The OFA/NARVL config fields of a recipe's drop-path (encoder and decoder alike, as every script sets them)."""
    return {} if rate is None else {"encoder_drop_path_rate": rate, "decoder_drop_path_rate": rate}


def ofa_size(config: Any) -> str | None:
    """The OFA size whose layers and width `config` has (an `OFAConfig`, `NARVLConfig` or a dict), else None."""
    get = config.get if isinstance(config, dict) else lambda k: getattr(config, k, None)
    for name, arch in OFA_ARCHS.items():
        if all(get(k) == arch[k] for k in ("encoder_layers", "decoder_layers", "d_model")):
            return name
    return None


def recipe_for(trainer: str, task: str, size: str | None) -> Recipe:
    """The recipe of `task` at `size` (student or teacher): its own script, else base, else the task's only one. A
    task without a published script (a registered one) follows the task its `Task.recipe_task` names."""
    table = _TABLES[trainer]
    if not any(t == task for t, _ in table):
        cls = TASKS.get(task)
        task = cls.recipe_task if cls is not None else task
    for key in ((task, size or "base"), (task, "base")):
        if key in table:
            return table[key]
    return next(r for (t, _), r in table.items() if t == task)


def resolve(cfg: Any, trainer: str, size: str | None) -> tuple[Any, dict[str, Any]]:
    """`cfg` with every unset (None) recipe field filled from the official recipe, and a record of the choice.

    The length: the user's `max_steps` wins, then the user's `epochs`, then the recipe's. The per-device batch comes
    from the recipe only when neither it nor `grad_accum` was given (the trainer derives one from the other).
    """
    rec = recipe_for(trainer, cfg.task, size)
    fields = {f: getattr(rec, f) for f in RECIPE_FIELDS if getattr(cfg, f, None) is None}
    if cfg.grad_accum is not None:
        fields.pop("per_device_batch_size", None)
    if cfg.max_steps is not None or cfg.epochs is not None:
        fields.pop("epochs", None)
    elif rec.max_steps is not None:
        fields["max_steps"] = rec.max_steps
    record = {"source": rec.source, "size": size or "base (no official size matched)",
              "filled": sorted(k for k in fields if k != "ema_decay" or fields[k] is not None)}
    return dataclasses.replace(cfg, **fields), record


def _value(rec: Recipe, field: str) -> str:
    value = getattr(rec, field)
    if field == "epochs" and value is None:
        return f"{rec.max_steps} steps"
    if isinstance(value, bool):
        return "frozen" if value else "trained"
    return "off" if value is None else f"{value:g}"


def option_help(trainer: str, field: str) -> str:
    """One line per task for `--help`: the base value, then the sizes whose script differs."""
    table = _TABLES[trainer]
    parts = []
    for task in dict.fromkeys(t for t, _ in table):  # the tasks with published scripts
        base = recipe_for(trainer, task, "base")
        other: dict[str, list[str]] = {}
        for (t, size), rec in table.items():
            if t == task and rec is not base and _value(rec, field) != _value(base, field):
                other.setdefault(_value(rec, field), []).append(size)
        parts.append(f"{task} {_value(base, field)}" + "".join(f", {'/'.join(z)} {v}" for v, z in other.items()))
    return "; ".join(parts)
