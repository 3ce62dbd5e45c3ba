"""`narvl-pipe run PIPELINE.yaml` (cached stages) and `narvl-pipe demo` (the built-in shapes-world pipeline)."""
from __future__ import annotations

import importlib.resources
import shutil
import time
from pathlib import Path
from typing import List, Optional

import typer

DEMO_PIPELINE = "demo.yaml"


def run(
    pipeline: Path = typer.Argument(..., metavar="PIPELINE", help="Pipeline YAML, e.g. pipelines/demo.yaml."),
    out: Optional[Path] = typer.Option(None, "--out", help="Artifact folder (default: runs/<pipeline name>)."),
    force: List[str] = typer.Option([], "--force", metavar="STAGE", help="Re-run this stage and every stage after it that uses it; repeatable."),
    sets: List[str] = typer.Option([], "--set", metavar="NAME=VALUE", help="Value of a pipeline variable (default: the environment variable NAME, else the YAML's default); repeatable."),
) -> None:
    """Run a pipeline's stages in order; each stage is skipped when its cached artifact is complete."""
    from pipelines.stages import load_pipeline, run_pipeline
    from pipelines.variables import parse_sets

    pipe = load_pipeline(pipeline, parse_sets(sets))
    out = out or Path("runs") / pipe.name
    typer.echo(f"pipeline {pipe.name} ({len(pipe.stages)} stages) -> {out}")
    start = time.perf_counter()
    outcomes = run_pipeline(pipe, out, force=force, log=typer.echo)
    typer.echo(f"done: {timing_line(outcomes, time.perf_counter() - start)}")


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Output folder (artifacts of every stage + the report)."),
    force: List[str] = typer.Option([], "--force", metavar="STAGE", help="Re-run this demo stage and the stages after it; repeatable."),
) -> None:
    """Offline end to end on the shapes world: AR teacher -> distill -> NAR students (KD vs raw) -> report."""
    run_demo(out, force)


def run_demo(out: Path, force: List[str] = (), pipeline_file: Path | None = None) -> dict:
    """Run the demo pipeline (default: the packaged demo.yaml), copy its report into `out`, print the table."""
    import json

    import datasets

    from pipelines.report import REPORT_FILES, format_checks, format_table, metric_name
    from pipelines.stages import load_pipeline, run_pipeline

    import transformers

    datasets.disable_progress_bars()  # the stages' own progress bars (training, distill, evaluation) are enough
    transformers.utils.logging.disable_progress_bar()
    pipeline_file = pipeline_file or Path(str(importlib.resources.files("pipelines") / DEMO_PIPELINE))
    pipe = load_pipeline(pipeline_file)
    out = Path(out)
    typer.echo(
        "narvl-pipe demo: distil an autoregressive OFA teacher into a one-pass NARVL student, offline, on the\n"
        "shapes world (captioning). Stages: world -> AR teacher -> teacher beam search over train (distill) ->\n"
        "NAR student on teacher captions (KD) and on raw multimodal references (raw) -> test-split evaluation.\n"
        f"Every stage is cached in {out}/<stage>-<fingerprint>/ (a re-run skips finished stages).\n"
    )
    start = time.perf_counter()
    outcomes = run_pipeline(pipe, out, force=force, log=typer.echo)
    wall = time.perf_counter() - start
    report_dir = next(o.dir for o, spec in zip(outcomes, pipe.stages) if spec.kind == "report")
    for name in REPORT_FILES:
        shutil.copyfile(report_dir / name, out / name)
    report = json.loads((out / "report.json").read_text())
    typer.echo(f"\n{report['title']}\n")
    typer.echo(format_table(report))
    rows = report["rows"]
    typer.echo(f"\n{metric_name(report)}: on all "
               f"{rows[0]['num_samples']} test images; ms/sample: batch {rows[0].get('latency_batch_size', '?')}, "
               f"mean over {rows[0].get('latency_samples', '?')} test images on this machine.")
    typer.echo(f"Metrics computed by: {report.get('metric_implementation', 'unrecorded')}.")
    typer.echo("\nThe paper's claims, in miniature:")
    typer.echo(format_checks(report))
    if report.get("note"):
        typer.echo(f"\nNote: {report['note']}")
    typer.echo(f"\n{timing_line(outcomes, wall)}; report: {out / 'report.md'}, {out / 'report.json'}, "
               f"{out / 'report.png'}")
    return report


def timing_line(outcomes, wall: float) -> str:
    """What this run cost, and what the cached stages cost when they were computed (a cached re-run takes ~0 s)."""
    from pipelines.stages import format_duration

    cached = [o for o in outcomes if o.status == "skipped"]
    then = sum((o.cached or {}).get("seconds", 0.0) for o in cached)
    then_cpu = sum((o.cached or {}).get("cpu_seconds", 0.0) for o in cached)
    earlier = f"computing them took {format_duration(then)} wall, {format_duration(then_cpu)} cpu"
    if len(cached) == len(outcomes):
        return f"all {len(outcomes)} stages cached, nothing ran ({earlier})"
    cpu = sum(o.cpu_seconds for o in outcomes)
    line = f"wall time {format_duration(wall)}, cpu time of the stages {format_duration(cpu)}"
    if cached:
        line += f" ({len(cached)} of {len(outcomes)} stages cached; {earlier.replace('them', 'those')})"
    return line
