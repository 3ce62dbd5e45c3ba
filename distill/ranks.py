"""The processes of a `torchrun`/`accelerate launch` job as `distill` uses them: state, and the one sum a job's summary line needs."""
from __future__ import annotations

import torch
import torch.distributed as dist
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env


def process_state() -> PartialState:
    """accelerate's process state. `PartialState` only treats a torchrun/accelerate CPU job as multi-process when
    told `cpu=True`: do so when ACCELERATE_USE_CPU is set or no accelerator exists."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.accelerator.is_available())


def sum_over_ranks(state, value: int) -> int:
    """The sum of every rank's `value`."""
    if state.num_processes == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=state.device)
    dist.all_reduce(t)
    return int(t.item())
