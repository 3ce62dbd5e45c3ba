"""The steps of `student.trainer.train`: the prepared run, one optimizer step, its log line, restore and the final
evaluation (in the order `train` calls them; the order of RNG draws is what makes resume exact)."""
from __future__ import annotations

import json
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, send_to_device
from transformers import get_polynomial_decay_schedule_with_warmup

from student.checkpoints import LOG_FILE, STATE_FILE, BestModel, save_checkpoint, truncate_log
from student.ema import WeightEMA
from student.train_config import EvalFn, LossFn, TrainConfig


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # No decay on biases, norms and 1-D gains, as in fairseq/transformers recipes.
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class Run:
    """The prepared objects of one training run."""

    accelerator: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: WeightEMA | None
    eval_fn: EvalFn | None
    best: BestModel | None = None
    data_state: Any = None
    """`() -> state` of a streamed training set's loader, saved with each checkpoint (None: map-style rows, whose
    position follows from the step)."""

    def evaluate(self, step: int) -> dict[str, float]:
        """`eval_fn` on the unwrapped model (the EMA weights when kept, swapped back afterwards); with
        `select_best`, the evaluated weights are kept when they score best."""
        plain = self.accelerator.unwrap_model(self.model)
        if self.ema is not None:
            self.ema.swap(plain)
        try:
            metrics = self.eval_fn(plain, self.accelerator)
            if self.best is not None:
                self.best.offer(metrics, step, plain)
            return metrics
        finally:
            if self.ema is not None:
                self.ema.swap(plain)


def make_accelerator(cfg: TrainConfig, out: Path, precision: str, tracker: str | None) -> Accelerator:
    held = AcceleratorState._shared_state.get("_mixed_precision")  # read without initialising the singleton
    if held is not None and precision is not None and precision != held:
        # One process, several runs (pipeline stages with --jobs 1): Accelerate's state is a singleton that refuses
        # a second precision. Only the precision part goes; the process group (PartialState) stays.
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(
        mixed_precision=precision,
        log_with=tracker,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        step_scheduler_with_optimizer=False,  # one scheduler step per optimizer step, whatever the world size
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.find_unused_parameters)],
    )


def prepare(model: torch.nn.Module, cfg: TrainConfig, max_steps: int, accelerator: Accelerator,
             eval_fn: EvalFn | None) -> Run:
    """AdamW, warmup + polynomial decay, `accelerator.prepare`, and the EMA (checkpointed with the run)."""
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.adam_betas),
                                  eps=cfg.adam_eps)
    # At least one decay step: the schedule divides by (max_steps - warmup).
    warmup = max(0, min(int(math.ceil(cfg.warmup_ratio * max_steps)), max_steps - 1))
    # fairseq decays over `total_num_update`: the run's length, unless a recipe keeps another (`lr_decay_steps`).
    horizon = max(cfg.lr_decay_steps or max_steps, warmup + 1)
    scheduler = get_polynomial_decay_schedule_with_warmup(
        optimizer, num_warmup_steps=warmup, num_training_steps=horizon,
        lr_end=min(cfg.lr_end, cfg.lr * 0.999), power=cfg.lr_power)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    ema = None
    if cfg.ema_decay:
        ema = WeightEMA(accelerator.unwrap_model(model), cfg.ema_decay)
        accelerator.register_for_checkpointing(ema)  # saved and restored with the run
    return Run(accelerator, model, optimizer, scheduler, ema, eval_fn)


def restore(accelerator: Accelerator, ckpt: Path | None, out: Path) -> tuple[int, dict[str, Any]]:
    """(start step, the checkpoint's extra state) of a resumed run, (0, {}) of a fresh one; the log is cut back to
    the restored step (or removed)."""
    start_step, extra = 0, {}
    if ckpt is not None:
        accelerator.load_state(str(ckpt))  # weights, optimizer, scheduler and this process's RNG states
        extra = json.loads((ckpt / STATE_FILE).read_text())
        start_step = int(extra.pop("step"))
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if ckpt is None:
            (out / LOG_FILE).unlink(missing_ok=True)
        else:
            truncate_log(out / LOG_FILE, start_step)
    return start_step, extra


def optimizer_step(run: Run, loss_fn: LossFn, batches: Iterator, grad_accum: int, max_grad_norm: float, step: int
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], float, float]:
    """Optimizer step `step` (1-based) over `grad_accum` micro-batches: (mean loss, summed counts, grad norm, the lr
    used)."""
    acc, model = run.accelerator, run.model
    step_loss = torch.zeros((), device=acc.device)
    counts: dict[str, torch.Tensor] = {}
    for micro in range(grad_accum):
        batch = send_to_device(next(batches), acc.device)
        # Gradients are all-reduced only on the last micro-batch.
        sync = micro == grad_accum - 1
        with acc.no_sync(model) if not sync else nullcontext():
            with acc.autocast():
                loss, c = loss_fn(model, batch, step)
            acc.backward(loss / grad_accum)
        step_loss += loss.detach().float() / grad_accum
        for k, v in c.items():
            counts[k] = counts.get(k, 0) + torch.as_tensor(v, device=acc.device).detach().float()
    grad_norm = acc.clip_grad_norm_(model.parameters(), max_grad_norm) if max_grad_norm > 0 else torch.zeros(())
    lr = run.scheduler.get_last_lr()[0]  # the rate this step used
    run.optimizer.step()
    if not acc.optimizer_step_was_skipped:  # fp16: an overflowing step leaves the schedule alone
        run.scheduler.step()
        if run.ema is not None:
            run.ema.update(acc.unwrap_model(model))
    run.optimizer.zero_grad(set_to_none=True)
    return step_loss, counts, float(grad_norm), lr


def step_log(acc: Accelerator, step: int, step_loss: torch.Tensor, counts: dict[str, torch.Tensor],
              grad_norm: float, lr: float, seconds: float, totals: dict[str, float]) -> dict[str, float]:
    """One all-reduce for the logs: mean loss over processes, summed counts (and their running totals)."""
    keys = sorted(counts)
    packed = acc.reduce(torch.stack([step_loss] + [counts[k] for k in keys]), reduction="sum")
    log = {"step": step, "loss": packed[0].item() / acc.num_processes, "lr": lr, "grad_norm": grad_norm,
           "sec_per_step": seconds}
    for k, v in zip(keys, packed[1:].tolist()):
        log[k] = v
        totals[k] = totals.get(k, 0.0) + v
        log[f"total_{k}"] = totals[k]
    return log


def record_step(run: Run, cfg: TrainConfig, log: dict[str, float], bar: Any, tracker: str | None,
                 evaluated: bool, totals: dict[str, float]) -> None:
    """The step's log line (main process), tracker entry and, every `save_every` steps, the checkpoint."""
    acc, step = run.accelerator, int(log["step"])
    if acc.is_main_process:
        with (Path(cfg.output_dir) / LOG_FILE).open("a") as f:
            f.write(json.dumps(log) + "\n")
        bar.set_postfix(loss=f"{log['loss']:.4f}", lr=f"{log['lr']:.2e}")
        bar.update(1)
    if tracker and (step % cfg.log_every == 0 or evaluated):
        acc.log({k: v for k, v in log.items() if k != "step"}, step=step)
    if cfg.save_every and step % cfg.save_every == 0:
        save_step(run, cfg, step, totals)


def save_step(run: Run, cfg: TrainConfig, step: int, totals: dict[str, float]) -> None:
    """The checkpoint of `step`: weights, optimizer, the running totals, the best evaluation so far (`select_best`)
    and a streamed set's data position."""
    best = {"best": run.best.state()} if run.best is not None else {}
    save_checkpoint(run.accelerator, cfg, step, {"totals": totals, **best}, run.data_state)
    if run.best is not None:
        run.best.committed()


def final_eval(run: Run, tracker: str | None, step: int) -> dict[str, float]:
    """The run's result is the EMA average when kept; then the final evaluation."""
    if run.ema is not None:
        run.ema.swap(run.accelerator.unwrap_model(run.model))
        run.ema = None
    metrics: dict[str, float] = {}
    if run.eval_fn is not None:
        run.model.eval()
        metrics = run.evaluate(step)
        if tracker:
            run.accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)
    return metrics
