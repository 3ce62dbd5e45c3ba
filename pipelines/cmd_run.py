"""`narvl-pipe run PIPELINE.yaml` (cached stages) and `narvl-pipe demo` (the built-in shapes-world pipeline)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def run(
    pipeline: Path = typer.Argument(..., help="Pipeline YAML, e.g. pipelines/demo.yaml."),
    out: Optional[Path] = typer.Option(None, "--out", help="Artifact folder (default: runs/<pipeline name>)."),
    force: List[str] = typer.Option([], "--force", help="Re-run this stage (and the stages after it); repeatable."),
) -> None:
    """Run a pipeline's stages in order; each stage is skipped when its cached artifact is complete."""
    from pipelines.stages import load_pipeline, run_pipeline

    pipe = load_pipeline(pipeline)
    out = out or Path("runs") / pipe.name
    typer.echo(f"pipeline {pipe.name} ({len(pipe.stages)} stages) -> {out}")
    run_pipeline(pipe, out, force=force, log=typer.echo)


def demo() -> None:
    """Not built yet."""
    raise SystemExit("narvl-pipe: this command is not built yet")
