"""`narvl-pipe distill`: run the teacher over a dataset into resumable parquet shards (+ manifest + card).

A thin layer over `distill.run.run_distill`, its options generated from `DistillConfig`; see `distill/run.py` and
`distill/shards.py` for the behaviour and the output layout (`datasets.load_dataset(OUT)` opens the result). An
`--out hf://datasets/user/name` is written in `--work-dir` and uploaded by `narvl-pipe push` when complete: every
shard is then committed in a few commits (the Hub allows about 128 commits an hour), never one per flush.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer
from accelerate import PartialState

from distill.config import DistillConfig
from distill.errors import UserError
from distill.run import run_distill
from pipelines import hub
from pipelines.options import config_command, model_opts


@config_command(DistillConfig, model_opts())
def distill(config: DistillConfig) -> None:
    """Distil the teacher's outputs over SRC into OUT (resumable: rerun the same command after a crash)."""
    repo_id = hub_repo(config.out)
    summary = run_distill(replace(config, out=work_dir(config, repo_id)) if repo_id else config)
    if summary is not None:
        if PartialState().is_main_process:
            typer.echo(summary.line())
            if repo_id and not summary.remaining:
                result = hub.push(summary.out, repo_id)
                typer.echo(f"pushed {sum(len(v) for v in result.data_files.values())} parquet file(s) + README.md "
                           f"to {repo_id}: {result.url}")


def hub_repo(out: str) -> str | None:
    """The repo id of an `hf://datasets/user/name` output (None for any other)."""
    prefix = "hf://datasets/"
    if not out.startswith("hf://"):
        return None
    repo = out[len(prefix):].strip("/") if out.startswith(prefix) else ""
    if repo.count("/") != 1:
        raise UserError(f"--out {out}: a Hub output is hf://datasets/user/name")
    return repo


def work_dir(config: DistillConfig, repo_id: str) -> str:
    """Where an `hf://` output is written before its upload."""
    return config.work_dir or str(Path.home() / ".cache" / "narvl-pipe" / "distill" / repo_id.replace("/", "--"))
