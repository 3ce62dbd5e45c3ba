"""`narvl-pipe distill`: run the teacher over a dataset into a resumable, sharded Arrow dataset.

A thin layer over `distill.run.run_distill`, its options generated from `DistillConfig`; see `distill/run.py` and
`distill/shards.py` for the behaviour and the output layout (`datasets.load_from_disk(OUT)` opens the result).
"""
from __future__ import annotations

import typer

from distill.config import TEACHER_CHOICES, DistillConfig
from distill.sources import CANONICAL_COLUMNS, parse_columns  # light (no datasets import): keeps --help fast
from pipelines.options import Opt, config_command

OPTS = {
    "columns": Opt(flag="--column", metavar="CANONICAL=SOURCE", parse=(list[str], parse_columns),
                   help="Read a canonical column from another source column, e.g. captions=text (repeatable).",
                   more=f"Canonical columns: {', '.join(CANONICAL_COLUMNS)}."),
    **{name: Opt(choices=choices) for name, choices in TEACHER_CHOICES.items()},
}


@config_command(DistillConfig, OPTS)
def distill(config: DistillConfig) -> None:
    """Distil the teacher's outputs over SRC into OUT (resumable: rerun the same command after a crash)."""
    from distill.run import run_distill

    summary = run_distill(config)
    if summary is not None:
        from accelerate import PartialState

        if PartialState().is_main_process:
            typer.echo(summary.line())
