"""One Accelerate training loop, shared by `train-student` (Query-CTC) and `train-teacher` (cross-entropy).

Exact resume is a design goal: a run killed with SIGKILL and resumed ends with the same weights as an uninterrupted
run. Three choices make that hold:

* the data order is a pure function of (seed, global step): `StepBatchSampler` cuts an endless stream of seeded
  per-epoch permutations into global batches, so a resumed run starts at the restored step without replaying the
  data (no `skip_first_batches` walk) and the order does not depend on the number of processes;
* `accelerator.save_state` stores model, optimizer, scheduler and every process's RNG states; it is written to a
  temporary folder and renamed, so a checkpoint folder either is complete or does not exist;
* the DataLoader gets its own `torch.Generator`, because creating a DataLoader iterator otherwise draws from the
  global RNG, which would shift dropout masks after a resume.

`batch_size` is the GLOBAL batch of one optimizer step (all processes and accumulation steps together), so runs on 1
or several processes see the same samples per step and give the same loss curve. The accumulation steps follow from
the process count and `per_device_batch_size` (as fairseq's `--batch-size` x `--update-freq` x GPUs), and the length
from `epochs` unless `max_steps` is given.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env, set_seed
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from distill.errors import Interrupted, UserError
from distill.signals import StopSignals
from distill.workers import DieWithParent
from student.checkpoints import CHECKPOINT_DIR, DATA_STATE, BestModel, latest_checkpoint
from student.preflight import preflight
from student.train_config import EvalFn, LossFn, TrainConfig, TrainResult
from student.train_fields import with_trainer_defaults
from student.train_steps import (final_eval, make_accelerator, optimizer_step, prepare, record_step, restore,
                                 save_step, step_log)
from student.train_setup import evaluation_steps, resolve_accumulation, resolve_length, resolve_mixed_precision

__all__ = ["TrainConfig", "TrainResult", "StepBatchSampler", "train", "latest_checkpoint", "CHECKPOINT_DIR"]


class StepBatchSampler(Sampler):
    """Micro-batches of one process for global steps `start_step .. max_steps-1`, as `(row, draw)` pairs.

    The stream is the concatenation of per-epoch permutations `randperm(num_rows, seed + epoch)`; global step `s` owns
    stream positions `[s*B, (s+1)*B)`. Within a step, micro-batch `m` of process `r` takes the chunk
    `(m * world + r) * b` of size `b = B / (world * accum)`. `draw` is the stream position, a per-sample seed that
    stays the same whatever the number of processes or a resume (used e.g. to pick a random reference caption).
    """

    def __init__(self, num_rows: int, batch_size: int, num_processes: int, process_index: int, grad_accum: int,
                 seed: int, start_step: int, max_steps: int):
        if num_rows <= 0:
            raise UserError("the training set is empty")
        per = num_processes * grad_accum
        if batch_size % per:
            raise UserError(f"batch size {batch_size} must be divisible by processes x grad_accum = {per}")
        self.num_rows, self.batch_size, self.micro = num_rows, batch_size, batch_size // per
        self.world, self.rank, self.accum = num_processes, process_index, grad_accum
        self.seed, self.start_step, self.max_steps = seed, start_step, max_steps
        self._perm_epoch, self._perm = -1, None

    def _row(self, pos: int) -> int:
        epoch = pos // self.num_rows
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.num_rows, generator=gen).tolist(), epoch
        return self._perm[pos % self.num_rows]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.max_steps):
            for m in range(self.accum):
                start = step * self.batch_size + (m * self.world + self.rank) * self.micro
                yield [(self._row(p), p) for p in range(start, start + self.micro)]

    def __len__(self) -> int:
        return max(0, self.max_steps - self.start_step) * self.accum


class _DrawDataset(Dataset):
    """Fetch `(row, draw)`: datasets that define `example(row, draw)` receive the draw, others are indexed by row."""

    def __init__(self, ds: Any):
        self.ds = ds
        self._with_draw = hasattr(ds, "example")

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        row, draw = key
        return self.ds.example(row, draw) if self._with_draw else self.ds[row]


def _tracker(report_to: str) -> str | None:
    if report_to == "none":
        return None
    if report_to == "auto":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            return None
        return "tensorboard"
    return report_to


def _flat_config(config: dict[str, Any]) -> dict[str, Any]:
    # Trackers (tensorboard hparams) only take scalars and strings.
    return {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v)) for k, v in config.items()}


def _stop_if_signalled(run, cfg: TrainConfig, signals: StopSignals, step: int, max_steps: int,
                       totals: dict[str, float]) -> None:
    """After a SIGTERM (Slurm preemption) or Ctrl-C on any process: every process saves the checkpoint of this step
    (the processes agree through one all-reduce), then `Interrupted` says how to resume."""
    acc = run.accelerator
    flag = torch.tensor(float(signals.received is not None), device=acc.device)
    if acc.num_processes > 1:
        flag = acc.reduce(flag, reduction="sum")
    if not flag.item() or step >= max_steps:
        return
    if not (cfg.save_every and step % cfg.save_every == 0):  # else record_step has just saved it
        save_step(run, cfg, step, totals)
    where = Path(cfg.output_dir) / CHECKPOINT_DIR / f"step_{step:08d}"
    raise Interrupted(f"training interrupted by {signals.received or 'a signal'} at step {step} of {max_steps}: "
                      f"checkpoint saved in {where}; run the same command with --resume to continue",
                      signals.received or "SIGTERM")


def train(model: torch.nn.Module, loss_fn: LossFn, train_ds: Any, config: TrainConfig,
          collate_fn: Callable[[list[Any]], Any] | None = None, eval_fn: EvalFn | None = None,
          run_config: dict[str, Any] | None = None, epoch_samples: int | None = None) -> TrainResult:
    """Train `model` on `train_ds` with AdamW, warmup + polynomial decay, clipping and periodic checkpoints.

    Args:
        model: any `nn.Module`; `loss_fn(model, batch, step)` calls it.
        loss_fn: returns `(mean loss, counts)` of a micro-batch of optimizer step `step` (1-based); counts are summed
            over micro-batches and processes and logged (e.g. `n_infeasible` CTC samples, never silently dropped).
        train_ds: map-style dataset (`len` + `[row]`, or `example(row, draw)` to receive a per-sample seed).
        config: `TrainConfig` (unset recipe fields take `TRAINER_DEFAULTS`).
        collate_fn: turns a list of items into a batch (tensors are moved to the device by the trainer).
        eval_fn: `eval_fn(unwrapped_model, accelerator) -> metrics`, run every `eval_every` steps (and each epoch
            with `eval_each_epoch`) and at the end; `select_best` keeps the best-scoring weights.
        run_config: the caller's resolved config, sent to the trackers.
        epoch_samples: the samples one epoch counts, for `epochs` and `eval_each_epoch` (default `len(train_ds)`).
    """
    cfg = with_trainer_defaults(config)
    cfg.validate()
    if cfg.select_best and eval_fn is None:
        raise UserError(f"`select_best` {cfg.select_best}: no evaluation to select on (give an evaluation source)")
    out = Path(cfg.output_dir)
    if not cfg.resume and latest_checkpoint(out) is not None:
        raise UserError(f"{out} holds checkpoints of an earlier run: pass `resume` to continue it, or choose "
                        "another output folder")
    streaming = getattr(train_ds, "streaming", False)  # a `student.stream_rows.StreamRows`
    if streaming and train_ds.num_rows is None and cfg.max_steps is None:
        raise UserError("`streaming` needs `max_steps` when the stream's row count is unknown")
    epoch_samples = epoch_samples or (train_ds.num_rows if streaming else len(train_ds))
    if epoch_samples is None and cfg.eval_each_epoch:
        raise UserError("`eval_each_epoch` needs the stream's row count (an epoch); use `eval_every`")
    max_steps = resolve_length(cfg, epoch_samples)
    eval_steps = evaluation_steps(cfg, max_steps, epoch_samples) if eval_fn is not None else set()
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    grad_accum, per_device = resolve_accumulation(cfg, state.num_processes)
    tracker = _tracker(cfg.report_to)
    accelerator = make_accelerator(cfg, out, resolve_mixed_precision(cfg.mixed_precision, state.device), tracker)
    set_seed(cfg.seed)
    ckpt = latest_checkpoint(out) if cfg.resume else None
    if accelerator.device.type == "cpu" and not streaming:  # predicted memory and step time: a run that cannot fit
        preflight(model, loss_fn, _DrawDataset(train_ds), collate_fn,
                  dataclasses.replace(cfg, grad_accum=grad_accum, max_steps=max_steps), accelerator)
    resolved = {"max_steps": max_steps, "grad_accum": grad_accum, "per_device_batch_size": per_device,
                "mixed_precision": accelerator.mixed_precision}
    run = prepare(model, cfg, max_steps, accelerator, eval_fn)
    start_step, extra = restore(accelerator, ckpt, out)
    if cfg.select_best:
        run.best = BestModel(cfg.select_best, out, accelerator.is_main_process, extra.get("best"))
    if tracker:
        accelerator.init_trackers(cfg.project_name, config=_flat_config(run_config or cfg.to_dict()))

    if streaming:
        loader = train_ds.loader(cfg.batch_size // (accelerator.num_processes * grad_accum), collate_fn,
                                 cfg.num_workers, DieWithParent())
        if ckpt is not None:
            loader.load_state_dict(torch.load(ckpt / DATA_STATE.format(rank=accelerator.process_index),
                                              weights_only=False))
        run.data_state = loader.state_dict
    else:
        sampler = StepBatchSampler(len(train_ds), cfg.batch_size, accelerator.num_processes,
                                   accelerator.process_index, grad_accum, cfg.seed, start_step, max_steps)
        loader = DataLoader(_DrawDataset(train_ds), batch_sampler=sampler, collate_fn=collate_fn,
                            num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(cfg.seed),
                            worker_init_fn=DieWithParent())  # a killed run leaves no orphan workers behind
    batches = iter(loader)
    totals = {k: float(v) for k, v in extra.get("totals", {}).items()}
    history: list[dict[str, float]] = []
    bar = tqdm(total=max_steps, initial=start_step, desc="train", disable=not accelerator.is_main_process)
    run.model.train()
    step = start_step
    with StopSignals() as signals, bar:
        for step in range(start_step + 1, max_steps + 1):
            t0 = time.perf_counter()
            step_loss, counts, grad_norm, lr = optimizer_step(run, loss_fn, batches, grad_accum, cfg.max_grad_norm,
                                                              step)
            log = step_log(accelerator, step, step_loss, counts, grad_norm, lr, time.perf_counter() - t0, totals)
            evaluated = step in eval_steps
            if evaluated:
                run.model.eval()
                log.update({f"eval/{k}": v for k, v in run.evaluate(step).items()})
                run.model.train()
            history.append(log)
            record_step(run, cfg, log, bar, tracker, evaluated, totals)
            _stop_if_signalled(run, cfg, signals, step, max_steps, totals)

    eval_metrics = final_eval(run, tracker, step)
    if tracker:
        accelerator.end_training()
    accelerator.wait_for_everyone()
    return TrainResult(model=accelerator.unwrap_model(run.model), step=step, history=history,
                       eval_metrics=eval_metrics, is_main_process=accelerator.is_main_process, resolved=resolved,
                       best=run.best.record() if run.best is not None else None)
