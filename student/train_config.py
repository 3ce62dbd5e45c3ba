"""The trainer's settings and result types (`student.trainer.train` and its steps `student.train_steps` import
them from here, so that neither imports the other)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

from distill.errors import UserError
from student.train_fields import RecipeFields

__all__ = ["EvalFn", "LossFn", "TrainConfig", "TrainResult"]


@dataclass
class TrainConfig(RecipeFields):
    """Optimisation and bookkeeping settings of one training run. The recipe fields (`RecipeFields`: batch, length,
    rate, schedule, regularisation) left unset take `student.train_fields.TRAINER_DEFAULTS`."""

    output_dir: str
    """Run folder: `checkpoints/`, `log.jsonl` and tracker logs go here."""
    grad_accum: int | None = None
    """Gradient accumulation steps (default: from `per_device_batch_size`, else 1); `batch_size` must divide by
    this times the processes."""
    lr_power: float = 1.0
    """Power of the polynomial decay (1 = linear)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm; 0 disables clipping."""
    mixed_precision: str = "auto"
    """`auto` (CUDA: bf16 where supported, else fp16, as the scripts' `--fp16`; CPU: no; an `accelerate launch
    --mixed_precision` setting wins), or `no`, `fp16`, `bf16`."""
    seed: int = 0
    """Seed of initialisation, data order and dropout."""
    eval_every: int = 0
    """Evaluate with the task metric every this many steps (0: only at the end)."""
    eval_each_epoch: bool = False
    """Also evaluate at the end of every epoch (fairseq's `--validate-interval 1`)."""
    select_best: str | None = None
    """Keep the model of the evaluation with the highest value of this metric (e.g. `acc@0.5`, `vqa_accuracy`,
    `accuracy`, `cider`; fairseq's `--best-checkpoint-metric`): it becomes the output folder's model, the last step's
    is kept in `last/`, and `train_config.json` `selected` says which is which."""
    save_every: int = 0
    """Write a resumable checkpoint every this many steps (0: never)."""
    keep_checkpoints: int = 2
    """Number of most recent checkpoints kept on disk."""
    log_every: int = 10
    """Send metrics to the trackers every this many steps (`log.jsonl` gets every step)."""
    resume: bool = False
    """Continue from the latest complete checkpoint in `output_dir` (its checkpoints/ folder), if any."""
    num_workers: int = 0
    """DataLoader worker processes."""
    find_unused_parameters: bool = True
    """DDP: tolerate parameters without gradient (OFA's image-code norms, NARVL's unused decoder input norms)."""
    report_to: str = "auto"
    """Accelerate tracker: `auto` (tensorboard when installed, else none), `none`, or a tracker name."""
    project_name: str = "narvl"
    """Run name shown by the trackers."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """One-line errors for settings that contradict each other, before any model loads."""
        if self.select_best and not (self.eval_every or self.eval_each_epoch):
            raise UserError(f"`select_best` {self.select_best} needs evaluations to choose from: set `eval_every` "
                            "or `eval_each_epoch`")


@dataclass
class TrainResult:
    """What `train` returns."""

    model: torch.nn.Module
    """The trained model at the last step (the EMA average when kept), unwrapped from DDP."""
    step: int
    """Last optimizer step done."""
    history: list[dict[str, float]] = field(default_factory=list)
    """Per-step logs of THIS process's run (resumed runs start after the checkpoint); `log.jsonl` has them all."""
    eval_metrics: dict[str, float] = field(default_factory=dict)
    """Task metrics of the final evaluation (empty without `eval_fn`)."""
    is_main_process: bool = True
    """True on the process that should write files."""
    resolved: dict[str, Any] = field(default_factory=dict)
    """Settings the trainer derived: `max_steps`, `grad_accum`, `per_device_batch_size`, `mixed_precision`."""
    best: dict[str, Any] | None = None
    """With `select_best`: `{metric, value, step, metrics, weights}` of the best evaluation (`weights`: its
    safetensors file, `student.checkpoints.load_best`)."""


class LossFn(Protocol):
    def __call__(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return the mean loss of `batch` and counts to SUM over micro-batches and processes (e.g. `n_infeasible`)."""


EvalFn = Callable[[torch.nn.Module, Any], dict[str, float]]
"""`eval_fn(model, accelerator) -> metrics`, called on every process (so it may shard its work)."""
