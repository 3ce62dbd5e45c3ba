"""Before a CPU training run: predict its peak memory and step time from one real forward/backward, and refuse a
run that cannot fit in one line instead of swapping the machine to a halt.

The prediction is measured, not modelled: autograd's `saved_tensors_hooks` report every tensor kept for the backward
pass of a 2-sample batch (the activations, which grow with batch size and image resolution), and the weights add
their gradient and AdamW's two moments. Peak = resident memory now + 3 x trainable weights + micro-batch x
activations per sample x a factor for backward temporaries and allocator slack, `ACTIVATION_OVERHEAD` = (low, high)
as measured on OFA-tiny (`benchmarks/results/cpu_preflight.md`). A run is refused only when even the low estimate
exceeds the available memory, and warned about when the high one does. The probe leaves the model, its buffers and
every RNG as it found them, so it changes no result.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import psutil
import torch
from torch.utils.data.dataloader import default_collate

from distill.errors import UserError

__all__ = ["ACTIVATION_OVERHEAD", "StepEstimate", "estimate_step", "check_step_fits"]

ACTIVATION_OVERHEAD = (1.1, 1.5)
"""Range of (peak activation memory of a step) / (bytes autograd saves for backward), measured on OFA-tiny on CPU
(1.15 at 32 samples per pass, 1.45 at 2-4)."""
PROBE_SAMPLES = 2
"""Samples in the probe batch (2, not 1: BatchNorm needs more than one value per channel)."""
GB = 1024 ** 3


@dataclass
class StepEstimate:
    """Predicted cost of one optimizer step of this process."""

    peak_bytes: float
    """Predicted peak resident memory of the process (high estimate)."""
    peak_low_bytes: float
    """Low estimate of the same."""
    available_bytes: float
    """Memory available to this process (the machine's available memory / local processes)."""
    per_sample_bytes: float
    """Activation bytes autograd keeps per sample."""
    micro_batch: int
    """Samples per forward pass."""
    seconds_per_step: float
    """Predicted wall time of one optimizer step (all accumulation steps)."""
    image_size: int | None = None
    """Side of the images in the batch, when it has `patch_images`."""

    def line(self, max_steps: int) -> str:
        px = f" at {self.image_size} px" if self.image_size else ""
        total = self.seconds_per_step * max_steps
        return (f"CPU training: about {self.peak_low_bytes / GB:.1f}-{self.peak_bytes / GB:.1f} GB peak memory "
                f"({self.available_bytes / GB:.1f} GB "
                f"available; {self.micro_batch} samples per pass x {self.per_sample_bytes / GB:.2f} GB{px}), "
                f"about {self.seconds_per_step:.1f} s/step, {_duration(total)} for {max_steps} steps")


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


def _available_bytes() -> float:
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # processes sharing this machine's memory
    return psutil.virtual_memory().available / local


def estimate_step(model: torch.nn.Module, loss_fn: Callable, batch: Any, micro_batch: int, grad_accum: int,
                  autocast: Any = None, n_samples: int = PROBE_SAMPLES) -> StepEstimate:
    """Run `loss_fn(model, batch)` forward and backward once (`batch`: `n_samples` collated samples) and scale what
    it kept and took to `micro_batch` samples x `grad_accum` passes. Model, buffers, gradients and RNG states are
    restored."""

    n = n_samples
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    rss = psutil.Process().memory_info().rss
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}  # BatchNorm statistics move in train mode
    was_training = model.training
    with torch.random.fork_rng(devices=[]):  # dropout draws must not shift the run's RNG
        model.train()
        t0 = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), (autocast or contextlib.nullcontext()):
            loss, _ = loss_fn(model, batch, 1)
        loss.backward()
        seconds = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for k, v in model.named_buffers():
            v.copy_(buffers[k])
    model.train(was_training)

    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    per_sample = sum(saved.values()) / n
    low, high = (rss + 3 * trainable + micro_batch * per_sample * k for k in ACTIVATION_OVERHEAD)
    images = batch.get("patch_images") if isinstance(batch, dict) else None
    size = int(images.shape[-1]) if isinstance(images, torch.Tensor) else None
    return StepEstimate(peak_bytes=high, peak_low_bytes=low, available_bytes=_available_bytes(), per_sample_bytes=per_sample,
                        micro_batch=micro_batch, seconds_per_step=seconds / n * micro_batch * grad_accum,
                        image_size=size)


def check_step_fits(est: StepEstimate, max_steps: int, main_process: bool = True) -> None:
    """Print the estimate (a warning when the high estimate exceeds the available memory); raise `UserError` when
    even the low one does."""
    if est.peak_low_bytes > est.available_bytes:
        raise UserError(
            f"this run needs about {est.peak_low_bytes / GB:.1f} GB of memory per process but "
            f"{est.available_bytes / GB:.1f} GB is available ({est.micro_batch} samples per pass x "
            f"{est.per_sample_bytes / GB:.2f} GB): lower `batch_size` (raise `grad_accum` to keep the global batch) or "
            "`resolution`")
    if main_process:
        risky = est.peak_bytes > est.available_bytes
        print(f"{'warning' if risky else 'note'}: {est.line(max_steps)}"
              + (": it may not fit; lower --batch-size or --resolution" if risky else ""))


def preflight(model: torch.nn.Module, loss_fn: Callable, dataset: Any, collate_fn: Callable | None, config: Any,
              accelerator: Any) -> StepEstimate | None:
    """`estimate_step` on the first `PROBE_SAMPLES` training samples (`dataset[(row, draw)]`, as the trainer fetches
    them), then `check_step_fits`. For CPU runs: a GPU run's memory is not this machine's."""

    if len(dataset) == 0:
        return None  # the sampler reports the empty training set
    items = [dataset[(min(i, len(dataset) - 1), i)] for i in range(PROBE_SAMPLES)]
    batch = (collate_fn or default_collate)(items)
    micro = max(1, config.batch_size // (accelerator.num_processes * config.grad_accum))
    est = estimate_step(model, loss_fn, batch, micro, config.grad_accum, accelerator.autocast(), len(items))
    check_step_fits(est, config.max_steps, accelerator.is_main_process)
    return est
