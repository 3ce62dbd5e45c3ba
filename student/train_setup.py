"""What the trainer derives from its config before the first step: the number of steps, the gradient accumulation
for the process count, the mixed precision for the device; and the frozen token embeddings of a recipe.

Duck-typed on `student.trainer.TrainConfig` (fields `max_steps`, `epochs`, `batch_size`, `per_device_batch_size`,
`grad_accum`), so that `student.presets` and the trainer share it without an import loop.
"""
from __future__ import annotations

import math
import os
from typing import Any

import torch

from distill.errors import UserError

__all__ = ["evaluation_steps", "resolve_length", "resolve_accumulation", "resolve_mixed_precision",
           "freeze_token_embeddings"]


def resolve_length(cfg: Any, num_rows: int) -> int:
    """Optimizer steps: `max_steps`, else `ceil(epochs * num_rows / batch_size)` (`num_rows`: the samples one epoch
    counts)."""
    if cfg.max_steps is not None:
        if cfg.max_steps < 1:
            raise UserError(f"`max_steps` must be >= 1, got {cfg.max_steps}")
        return int(cfg.max_steps)
    if cfg.epochs is None or cfg.epochs <= 0:
        raise UserError(f"set `max_steps` or a positive `epochs` (got {cfg.epochs})")
    return max(1, math.ceil(cfg.epochs * num_rows / cfg.batch_size))


def evaluation_steps(cfg: Any, max_steps: int, epoch_samples: int) -> set[int]:
    """The steps before the last after which the trainer evaluates: every `eval_every` steps and, with
    `eval_each_epoch`, the step that ends each epoch (`ceil(k * epoch_samples / batch_size)`). The last step is
    always evaluated (the final evaluation)."""
    steps = set(range(cfg.eval_every, max_steps, cfg.eval_every)) if cfg.eval_every else set()
    if cfg.eval_each_epoch:
        k = 1
        while (end := math.ceil(k * epoch_samples / cfg.batch_size)) < max_steps:
            steps.add(end)
            k += 1
    return steps


def resolve_accumulation(cfg: Any, num_processes: int) -> tuple[int, int]:
    """(grad_accum, per-device batch) for the global `batch_size` on `num_processes` processes."""
    per = cfg.per_device_batch_size
    if cfg.grad_accum is not None:
        accum = int(cfg.grad_accum)
        if accum < 1 or cfg.batch_size % (accum * num_processes):
            raise UserError(f"`batch_size` {cfg.batch_size} must be divisible by processes ({num_processes}) x "
                            f"`grad_accum` ({accum})")
        if per is not None and per * accum * num_processes != cfg.batch_size:
            raise UserError(f"`grad_accum` {accum} and `per_device_batch_size` {per} disagree: processes "
                            f"({num_processes}) x {accum} x {per} != `batch_size` {cfg.batch_size}; set only one")
        return accum, cfg.batch_size // (accum * num_processes)
    # The per-device batch is a memory cap: a global batch smaller than processes x cap needs no accumulation.
    share = cfg.batch_size // num_processes
    per = share if per is None else min(per, share)
    if per < 1 or cfg.batch_size % (per * num_processes):
        raise UserError(f"`batch_size` {cfg.batch_size} must be divisible by processes ({num_processes}) x "
                        f"`per_device_batch_size` ({per})")
    return cfg.batch_size // (per * num_processes), per


def resolve_mixed_precision(value: str, device: torch.device) -> str | None:
    """Accelerate's `mixed_precision` argument; None lets an `accelerate launch --mixed_precision` setting apply."""
    if value != "auto":
        if value not in ("no", "fp16", "bf16"):
            raise UserError(f"`mixed_precision` must be auto, no, fp16 or bf16, got {value!r}")
        return value
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return None
    if device.type != "cuda":
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def freeze_token_embeddings(model: torch.nn.Module) -> list[str]:
    """Stop training the token embedding, the output projection tied to it and NARVL's blank row (the scripts'
    `--freeze-encoder-embedding --freeze-decoder-embedding` with shared embeddings); returns the frozen names."""
    targets = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    if getattr(model, "blank_row", None) is not None:
        targets.add(id(model.blank_row))
    frozen = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in targets:
            p.requires_grad_(False)
            frozen.append(name)
    return frozen
