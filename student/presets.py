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

from distill.errors import UserError
from distill.tasks import TASKS
from student.train_fields import DropWorstFields, RecipeFields

__all__ = ["BENCHMARKS", "OFA_ARCHS", "Recipe", "STUDENT_RECIPES", "TEACHER_RECIPES", "RECIPE_FIELDS",
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


@dataclass(kw_only=True)
class Recipe(DropWorstFields, RecipeFields):
    """One official script's settings: the values of the recipe fields it sets (those it leaves unset stay None)."""

    source: str
    """The script, `repo:path`."""


RECIPE_FIELDS = tuple(f.name for f in dataclasses.fields(Recipe) if f.name not in ("source", "max_steps"))
"""Config fields a recipe fills when the user left them unset (None); `max_steps` too, for update-counted scripts
(`resolve` decides between it and `epochs`)."""

BENCHMARKS: dict[str, tuple[str, ...]] = {"grounding": ("refcoco", "refcoco+", "refcocog")}
"""Tasks whose benchmarks have scripts of their own (`benchmark`); the first is the task's default."""

_N = "amazon-science/NARVL:run_scripts/"
_O = "OFA-Sys/OFA:run_scripts/"
_COMMON = dict(lr_end=0.0, weight_decay=0.01)
"""Every script: fairseq `polynomial_decay` to `end_learning_rate` 0, `--weight-decay 0.01`."""


def _r(source: str, **values: Any) -> Recipe:
    return Recipe(source=source, **_COMMON, **values)


STUDENT_RECIPES: dict[tuple[str, str], Recipe] = {
    ("caption", "huge"): _r(_N + "caption_nat/train_caption_stage1_huge_distill_from_huge_20.sh", epochs=5,
                            batch_size=2 * 8 * 8, per_device_batch_size=2, lr=1e-5, warmup_ratio=0.06,
                            drop_path=0.1, freeze_embeddings=True),
    ("vqa", "base"): _r(_N + "vqa_nat/train_vqa_base_6.sh", epochs=10, batch_size=4 * 16 * 8,
                        per_device_batch_size=4, lr=5e-5, warmup_ratio=0.04, drop_path=0.1,
                        freeze_embeddings=True, ema_decay=0.9999),
    # warmup 0: fairseq's `reinit` keeps `total_num_update` at its 1,000,000 default, so the rate stays near 5e-5.
    ("vqa", "huge"): _r(_N + "vqa_nat/train_vqa_huge_6_distill_huge.sh", epochs=10, batch_size=2 * 32 * 8,
                        per_device_batch_size=2, lr=5e-5, warmup_ratio=0.0, lr_decay_steps=1_000_000,
                        drop_path=0.1, freeze_embeddings=True, ema_decay=0.9999),
    ("grounding", "tiny"): _r(_N + "refcoco_nat/train_refcoco_tiny_5.sh", epochs=50, batch_size=16 * 1 * 8,
                              per_device_batch_size=16, lr=5e-5, warmup_ratio=0.06, drop_path=0.1,
                              freeze_embeddings=False),
    ("grounding", "base"): _r(_N + "refcoco_nat/train_refcoco_base_5.sh", epochs=10, batch_size=4 * 4 * 8,
                              per_device_batch_size=4, lr=5e-5, warmup_ratio=0.06, drop_path=0.1,
                              freeze_embeddings=False),
    ("grounding", "large"): _r(_N + "refcoco_nat/train_refcoco_large_5.sh", epochs=10, batch_size=1 * 16 * 8,
                               per_device_batch_size=1, lr=3e-5, warmup_ratio=0.06, drop_path=0.2,
                               freeze_embeddings=False),
    ("grounding", "huge"): _r(_N + "refcoco_nat/train_refcoco_huge_5.sh", epochs=10, batch_size=2 * 8 * 8,
                              per_device_batch_size=2, lr=3e-5, warmup_ratio=0.06, drop_path=0.2,
                              freeze_embeddings=False),
    ("grounding/refcocog", "tiny"): _r(_N + "refcoco_nat/train_refcocog_tiny_5.sh", epochs=50,
                                       batch_size=16 * 1 * 8, per_device_batch_size=16, lr=3e-5, warmup_ratio=0.06,
                                       drop_path=0.1, freeze_embeddings=False),
    ("grounding/refcocog", "base"): _r(_N + "refcoco_nat/train_refcocog_base_5.sh", epochs=12,
                                       batch_size=4 * 4 * 8, per_device_batch_size=4, lr=5e-5, warmup_ratio=0.06,
                                       drop_path=0.1, freeze_embeddings=False),
    ("grounding/refcocog", "huge"): _r(_N + "refcoco_nat/train_refcocog_huge_5.sh", epochs=15,
                                       batch_size=2 * 8 * 8, per_device_batch_size=2, lr=3e-5, warmup_ratio=0.06,
                                       drop_path=0.1, freeze_embeddings=False),
    ("grounding/refcoco+", "tiny"): _r(_N + "refcoco_nat/train_refcocoplus_tiny_5.sh", epochs=50,
                                       batch_size=16 * 1 * 8, per_device_batch_size=16, lr=5e-5, warmup_ratio=0.06,
                                       drop_path=0.1, freeze_embeddings=False),
    ("grounding/refcoco+", "base"): _r(_N + "refcoco_nat/train_refcocoplus_base_5.sh", epochs=10,
                                       batch_size=4 * 4 * 8, per_device_batch_size=4, lr=5e-5, warmup_ratio=0.06,
                                       drop_path=0.1, freeze_embeddings=False),
    ("grounding/refcoco+", "huge"): _r(_N + "refcoco_nat/train_refcocoplus_huge_5.sh", epochs=10,
                                       batch_size=2 * 8 * 8, per_device_batch_size=2, lr=3e-5, warmup_ratio=0.06,
                                       drop_path=0.2, freeze_embeddings=False),
    ("entailment", "base"): _r(_N + "snli_ve_nat/train_snli_ve_base_3.sh", epochs=5, batch_size=4 * 8 * 8,
                               per_device_batch_size=4, lr=5e-5, warmup_ratio=0.06, drop_path=0.1,
                               freeze_embeddings=False),
    ("entailment", "huge"): _r(_N + "snli_ve_nat/train_snli_ve_huge_3.sh", epochs=6, batch_size=2 * 16 * 8,
                               per_device_batch_size=2, lr=2e-5, warmup_ratio=0.06, drop_path=0.2,
                               freeze_embeddings=False),
}
"""NARVL's scripts (the student). Captioning has only the huge script; its values are the paper's base ones too.
NARVL's criterion has no drop-worst, so the caption script's `drop_worst_*` values do nothing there."""

TEACHER_RECIPES: dict[tuple[str, str], Recipe] = {
    ("caption", "base"): _r(_O + "caption/train_caption_stage1_base.sh", epochs=5, batch_size=8 * 4 * 4,
                            per_device_batch_size=8, lr=1e-5, warmup_ratio=0.06, drop_path=0.1,
                            freeze_embeddings=True, drop_worst_ratio=0.2, drop_worst_after=6000),
    ("caption", "large"): _r(_O + "caption/train_caption_stage1.sh", epochs=2, batch_size=8 * 4 * 4,
                             per_device_batch_size=8, lr=1e-5, warmup_ratio=0.06, drop_path=0.1,
                             freeze_embeddings=True, drop_worst_ratio=0.2, drop_worst_after=2500),
    ("vqa", "base"): _r(_O + "vqa/train_vqa_base_distributed.sh", epochs=15, batch_size=4 * 4 * 8 * 4,
                        per_device_batch_size=4, lr=5e-5, warmup_ratio=0.04, drop_path=0.1,
                        freeze_embeddings=True, ema_decay=0.9999),
    # Counted in updates: 40000 with 1000 warmup updates.
    ("vqa", "large"): _r(_O + "vqa/train_vqa_distributed.sh", max_steps=40000, batch_size=4 * 4 * 8 * 4,
                         per_device_batch_size=4, lr=5e-5, warmup_ratio=1000 / 40000, drop_path=0.2,
                         freeze_embeddings=True, ema_decay=0.9999),
    ("grounding", "base"): _r(_O + "refcoco/train_refcoco_base.sh", epochs=10, batch_size=4 * 8 * 4,
                              per_device_batch_size=4, lr=5e-5, warmup_ratio=0.06, drop_path=0.1,
                              freeze_embeddings=False),
    ("grounding", "large"): _r(_O + "refcoco/train_refcoco.sh", epochs=10, batch_size=4 * 8 * 4,
                               per_device_batch_size=4, lr=3e-5, warmup_ratio=0.06, drop_path=0.2,
                               freeze_embeddings=False),
    ("grounding/refcocog", "base"): _r(_O + "refcoco/train_refcocog_base.sh", epochs=12, batch_size=4 * 8 * 4,
                                       per_device_batch_size=4, lr=5e-5, warmup_ratio=0.06, drop_path=0.1,
                                       freeze_embeddings=False),
    ("grounding/refcocog", "large"): _r(_O + "refcoco/train_refcocog.sh", epochs=10, batch_size=4 * 8 * 4,
                                        per_device_batch_size=4, lr=3e-5, warmup_ratio=0.06, drop_path=0.2,
                                        freeze_embeddings=False),
    ("grounding/refcoco+", "base"): _r(_O + "refcoco/train_refcocoplus_base.sh", epochs=10, batch_size=4 * 8 * 4,
                                       per_device_batch_size=4, lr=5e-5, warmup_ratio=0.06, drop_path=0.1,
                                       freeze_embeddings=False),
    ("grounding/refcoco+", "large"): _r(_O + "refcoco/train_refcocoplus.sh", epochs=10, batch_size=4 * 8 * 4,
                                        per_device_batch_size=4, lr=3e-5, warmup_ratio=0.06, drop_path=0.2,
                                        freeze_embeddings=False),
    ("entailment", "base"): _r(_O + "snli_ve/train_snli_ve_base.sh", epochs=5, batch_size=4 * 8 * 8,
                               per_device_batch_size=4, lr=5e-5, warmup_ratio=0.06, drop_path=0.1,
                               freeze_embeddings=False),
    ("entailment", "large"): _r(_O + "snli_ve/train_snli_ve.sh", epochs=6, batch_size=4 * 8 * 8,
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


def _recipe_name(task: str, benchmark: str | None) -> str:
    """The table key of `task` on `benchmark`: the task itself for its default benchmark, else `task/benchmark`."""
    if benchmark is None:
        return task
    known = BENCHMARKS.get(task, ())
    if benchmark not in known:
        raise UserError(f"`benchmark` {benchmark!r}: task {task} has official recipes for "
                        f"{', '.join(known) if known else 'no named benchmark'}")
    return task if benchmark == known[0] else f"{task}/{benchmark}"


def recipe_for(trainer: str, task: str, size: str | None, benchmark: str | None = None) -> Recipe:
    """The recipe of `task` (on `benchmark`) at `size` (student or teacher): its own script, else base, else the
    task's only one. A task without a published script (a registered one) follows the task its `Task.recipe_task`
    names."""
    table = _TABLES[trainer]
    if not any(t == task for t, _ in table):
        cls = TASKS.get(task)
        task = cls.recipe_task if cls is not None else task
    name = _recipe_name(task, benchmark)
    for key in ((name, size or "base"), (name, "base")):
        if key in table:
            return table[key]
    return next(r for (t, _), r in table.items() if t == name)


def resolve(cfg: Any, trainer: str, size: str | None) -> tuple[Any, dict[str, Any]]:
    """`cfg` with every unset (None) recipe field filled from the official recipe, and a record of the choice.

    The length: the user's `max_steps` wins, then the user's `epochs`, then the recipe's. The per-device batch comes
    from the recipe only when neither it nor `grad_accum` was given (the trainer derives one from the other).
    """
    rec = recipe_for(trainer, cfg.task, size, getattr(cfg, "benchmark", None))
    fields = {f: getattr(rec, f) for f in RECIPE_FIELDS
              if hasattr(cfg, f) and getattr(cfg, f) is None and getattr(rec, f) is not None}
    if cfg.grad_accum is not None:
        fields.pop("per_device_batch_size", None)
    if cfg.max_steps is not None or cfg.epochs is not None:
        fields.pop("epochs", None)
    elif rec.max_steps is not None:
        fields["max_steps"] = rec.max_steps
    record = {"source": rec.source, "size": size or "base (no official size matched)", "filled": sorted(fields)}
    return dataclasses.replace(cfg, **fields), record


def _value(rec: Recipe, field: str) -> str:
    value = getattr(rec, field)
    if field == "epochs" and value is None:
        return f"{rec.max_steps} steps"
    if isinstance(value, bool):
        return "frozen" if value else "trained"
    if field == "lr_decay_steps" and value is None:
        return "the run's length"
    return "off" if value is None else f"{value:g}"


def option_help(trainer: str, field: str) -> str:
    """One line per task (and named benchmark) for `--help`: the base value, then the sizes whose script differs."""
    table = _TABLES[trainer]
    parts = []
    for task in dict.fromkeys(t for t, _ in table):  # the tasks (and benchmarks) with published scripts
        base = recipe_for(trainer, task, "base")
        other: dict[str, list[str]] = {}
        for (t, size), rec in table.items():
            if t == task and rec is not base and _value(rec, field) != _value(base, field):
                other.setdefault(_value(rec, field), []).append(size)
        label = task.split("/")[-1]  # `grounding/refcocog` shows as `refcocog`
        parts.append(f"{label} {_value(base, field)}" + "".join(f", {'/'.join(z)} {v}" for v, z in other.items()))
    return "; ".join(parts)
