"""`narvl-pipe run PIPELINE.yaml` (cached stages) and `narvl-pipe demo` (the built-in shapes-world pipeline)."""
from __future__ import annotations

import importlib.resources
import json
import shutil
import textwrap
import time
from pathlib import Path
from typing import List, Optional

import datasets
import transformers
import typer

from distill.errors import UserError
from distill.workers import usable_cores
from pipelines.report import REPORT_FILES, format_checks, format_examples, format_table
from pipelines.stages import format_duration, load_pipeline, run_pipeline
from pipelines.variables import parse_overrides, parse_sets

DEMO_PIPELINE = "demo.yaml"
JOBS_HELP = ("Stages run at once when none depends on another (each with its share of the threads, its output in "
             "OUT/logs/<stage>.log; evaluations run alone, as they time the model).")


def default_jobs() -> int:
    """The demo's `--jobs`: two stages at once where there are two cores (~1.3x the throughput of one stage on both
    cores here), else one."""
    return 2 if usable_cores() >= 2 else 1


def run(
    pipeline: Path = typer.Argument(..., metavar="PIPELINE", help="Pipeline YAML, e.g. pipelines/demo.yaml."),
    out: Optional[Path] = typer.Option(None, "--out", help="Artifact folder (default: runs/<pipeline name>)."),
    force: List[str] = typer.Option([], "--force", metavar="STAGE", help="Re-run this stage and every stage after it that uses it; repeatable."),
    sets: List[str] = typer.Option([], "--set", metavar="NAME=VALUE", help="Value of a pipeline variable (default: the environment variable NAME, else the YAML's default); repeatable."),
    overrides: List[str] = typer.Option([], "--override", metavar="STAGE.FIELD=VALUE", help="Set one config field of one stage (VALUE read as YAML), e.g. student.max_steps=4 for a short trial; repeatable."),
    jobs: int = typer.Option(1, "--jobs", min=1, help=JOBS_HELP),
) -> None:
    """Run a pipeline's stages in order; each stage is skipped when its cached artifact is complete."""
    pipe = load_pipeline(pipeline, parse_sets(sets), parse_overrides(overrides))
    out = out or Path("runs") / pipe.name
    typer.echo(f"pipeline {pipe.name} ({len(pipe.stages)} stages) -> {out}")
    start = time.perf_counter()
    outcomes = run_pipeline(pipe, out, force=force, log=typer.echo, jobs=jobs)
    typer.echo(f"done: {timing_line(outcomes, time.perf_counter() - start)}")


DEMO_PIPELINES = {"caption": ("demo.yaml", Path("runs/demo")), "all": ("demo_all.yaml", Path("runs/demo-all"))}
"""`narvl-pipe demo --tasks X` -> (the packaged pipeline it runs, its default output folder): the two demos never
share a folder, so one report never replaces the other."""


def demo(
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (artifacts of every stage + the report; "
                                       "default: runs/demo, or runs/demo-all with --tasks all)."),
    tasks: str = typer.Option("caption", "--tasks", help="caption (about 7 minutes) or all (the four tasks, "
                              "about 11 minutes on 2 CPU cores)."),
    force: List[str] = typer.Option([], "--force", metavar="STAGE", help="Re-run this demo stage and the stages after it; repeatable."),
    jobs: Optional[int] = typer.Option(None, "--jobs", min=1, help=JOBS_HELP + " Default: 2 with two cores or more, else 1."),
) -> None:
    """Offline end to end on the built-in shapes world, with a report (table, claims, plot).

    --tasks caption (pipelines/demo.yaml): trains a small AR OFA captioner from scratch, distils its beam-search
    captions over the train split, trains two NARVL students (on the teacher's captions, KD, and on raw
    references), evaluates all on the test split against a constant baseline.

    --tasks all (pipelines/demo_all.yaml): trains ONE multi-task OFA on caption, VQA, grounding and entailment, then
    fine-tunes it into one AR teacher per task (as OFA-Sys's task checkpoints are); distils caption and VQA; trains
    six NARVL students from their task's teacher (KD and raw for caption and VQA, on the labels for grounding and
    entailment); evaluates every model with its OFA decoding, a baseline per task.
    """
    if tasks not in DEMO_PIPELINES:
        raise UserError(f"--tasks must be one of {', '.join(DEMO_PIPELINES)}, got {tasks!r}")
    pipeline, default_out = DEMO_PIPELINES[tasks]
    run_demo(out or default_out, force, Path(str(importlib.resources.files("pipelines") / pipeline)),
             jobs or default_jobs())


def run_demo(out: Path, force: List[str] = (), pipeline_file: Path | None = None, jobs: int = 1) -> dict:
    """Run the demo pipeline (default: the packaged demo.yaml), copy its report into `out`, print the table."""
    datasets.disable_progress_bars()  # the stages' own progress bars (training, distill, evaluation) are enough
    transformers.utils.logging.disable_progress_bar()
    pipeline_file = pipeline_file or Path(str(importlib.resources.files("pipelines") / DEMO_PIPELINE))
    pipe = load_pipeline(pipeline_file)
    out = Path(out)
    typer.echo(
        "narvl-pipe demo: distil autoregressive OFA teachers into one-pass NARVL students, offline, on the shapes\n"
        f"world ({pipe.name}: {pipeline_file.name}).\n"
        + textwrap.fill(f"{len(pipe.stages)} stages: " + ", ".join(s.name for s in pipe.stages) + ".", 114,
                        break_on_hyphens=False)
        + f"\nEvery stage is cached in {out}/<stage>-<fingerprint>/ (a re-run skips finished stages).\n"
    )
    start = time.perf_counter()
    outcomes = run_pipeline(pipe, out, force=force, log=typer.echo, jobs=jobs)
    wall = time.perf_counter() - start
    report_dir = next(o.dir for o, spec in zip(outcomes, pipe.stages) if spec.kind == "report")
    for name in REPORT_FILES:
        shutil.copyfile(report_dir / name, out / name)
    report = json.loads((out / "report.json").read_text())
    typer.echo(f"\n{report['title']}\n")
    typer.echo(format_table(report))
    rows = [r for r in report["rows"] if r.get("ms_per_sample") is not None]
    typer.echo(f"\nscores on all {rows[0]['num_samples'] if rows else '?'} test rows; {report.get('latency', '')}, "
               "on this machine.")
    typer.echo(f"Metrics computed by: {report.get('metric_implementation', 'unrecorded')}.")
    typer.echo("\nThe paper's claims, in miniature:")
    typer.echo(format_checks(report))
    if any(report.get("examples", {}).values()):
        typer.echo("\nExample predictions (the first test rows):")
        typer.echo(format_examples(report))
    if report.get("note"):
        typer.echo(f"\nNote: {report['note']}")
    typer.echo("\n" + format_stage_times(outcomes))
    typer.echo(f"\n{timing_line(outcomes, wall)}; report: {out / 'report.md'}, {out / 'report.json'}, "
               f"{out / 'report.png'}")
    return report


def timing_line(outcomes, wall: float) -> str:
    """What this run cost, and what the cached stages cost when they were computed (a cached re-run takes ~0 s)."""
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


def format_stage_times(outcomes) -> str:
    """Wall and CPU seconds per stage and their sums; a cached stage shows what it took when it was computed."""
    width = max(len(o.name) for o in outcomes)
    lines = [f"{'stage':<{width}}  {'wall s':>7}  {'cpu s':>7}"]
    total = [0.0, 0.0]
    for o in outcomes:
        wall, cpu, when = o.seconds, o.cpu_seconds, ""
        if o.status == "skipped":
            wall, cpu = (o.cached or {}).get("seconds", 0.0), (o.cached or {}).get("cpu_seconds", 0.0)
            when = "  (cached: when it was computed)"
        total[0] += wall
        total[1] += cpu
        lines.append(f"{o.name:<{width}}  {wall:7.1f}  {cpu:7.1f}{when}")
    # With --jobs the stages overlap: their walls add up to more than the run's (printed after this table).
    return "\n".join(lines + [f"{'sum':<{width}}  {total[0]:7.1f}  {total[1]:7.1f}"])
