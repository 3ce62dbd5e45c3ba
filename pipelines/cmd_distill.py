"""`narvl-pipe distill`: run the teacher over a dataset into a resumable, sharded Arrow dataset.

A thin layer over `distill.run.run_distill`, its options generated from `DistillConfig`; see `distill/run.py` and
`distill/shards.py` for the behaviour and the output layout (`datasets.load_from_disk(OUT)` opens the result).
"""
from __future__ import annotations

import typer

from distill.config import DistillConfig
from pipelines.options import config_command, model_opts


@config_command(DistillConfig, model_opts())
def distill(config: DistillConfig) -> None:
    """Distil the teacher's outputs over SRC into OUT (resumable: rerun the same command after a crash)."""
    from distill.run import run_distill

    summary = run_distill(config)
    if summary is not None:
        from accelerate import PartialState

        if PartialState().is_main_process:
            typer.echo(summary.line())
