"""The built-in stage kinds of pipeline YAMLs: thin adapters from each stage's config dataclass to its function.

| kind            | config dataclass                         | function                              | resumes from        |
|-----------------|------------------------------------------|---------------------------------------|---------------------|
| `data`          | `distill.shapes.ShapesConfig`            | `write_shapes(dir, cfg)`              | - (restarts)        |
| `train-teacher` | `student.train_teacher.TeacherTrainConfig`   | `train_teacher(cfg)`                  | trainer checkpoints |
| `distill`       | `distill.run.DistillConfig`              | `run_distill(cfg)`                    | complete shards     |
| `train-student` | `student.train_student.StudentTrainConfig` | `train_student(cfg)`                | trainer checkpoints |
| `evaluate`      | `EvaluateStageConfig` (below)            | `student.evaluate.evaluate(...)`      | - (restarts)        |
| `baseline`      | `pipelines.baseline.BaselineConfig`      | `run_baseline(cfg, dir)`              | - (restarts)        |
| `report`        | `pipelines.report.ReportConfig`          | `pipelines.report.run_report`         | - (restarts)        |

The artifact folder is passed as the config's output field (`out`/`output_dir`), and trainers always get
`resume=True`, so a run killed inside a stage continues from that stage's own checkpoints or shards. A finished
trainer stage drops its `checkpoints/` (the final model is the artifact). The `*_NON_RESULT` sets name the fields
that change how a stage runs but not what it writes; they are not fingerprinted (see `pipelines.stages`).
Registered by `pipelines.stages.stage_kinds()` (from `builtin_kinds()`).
"""
from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from distill.run import DistillConfig, run_distill
from distill.sources import open_source
from distill.tasks import get_task
from pipelines.baseline import BaselineConfig, run_baseline
from pipelines.report import METRICS_FILE, PREDICTIONS_FILE, ReportConfig, run_report
from distill.shapes import ShapesConfig, write_shapes
from pipelines.stage_kind import StageKind
from distill.seam import Model
from student.eval_config import EvalConfig
from student.evaluate import evaluate, open_for_task
from student.latency import time_calls
from student.train_student import StudentTrainConfig, train_student
from student.train_teacher import TeacherTrainConfig, train_teacher
from student.trainer import CHECKPOINT_DIR

TRAIN_NON_RESULT = frozenset({"report_to", "project_name", "num_workers", "log_every", "keep_checkpoints",
                              "find_unused_parameters"})
"""`TrainConfig` fields that leave the trained model as it is: trackers, DataLoader workers, logging cadence, how many
checkpoints stay on disk, a DDP bookkeeping switch (the data order and the random draws don't depend on them)."""
DISTILL_NON_RESULT = frozenset({"num_workers", "progress", "flush_every", "overwrite"})
"""`DistillConfig` fields that leave the rows as they are (the same ones its manifest leaves out of the run identity)."""


@dataclass(kw_only=True)
class EvaluateStageConfig(EvalConfig):
    """Score one model on a split (`student.eval_config.EvalConfig`: the task metric on every row, batched, with its
    interval), then its latency at each of `latency_batch_sizes` on a subset. `out` is the stage folder's
    `predictions.jsonl`."""

    latency_batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 64])
    """Batch sizes latency is measured at (the paper's table is batch 1); reports compare speed-ups at each."""
    latency_limit: int | None = 50
    """Rows timed for latency at each batch size: one call per batch of that many rows (at least
    `student.latency.MIN_CALLS` calls, rows reused in turn) after one warm-up call; the figure is the median over the
    calls (None: all rows; 0: report the quality pass's batched mean instead, at `batch_size`)."""


def measure_latency(cfg: EvaluateStageConfig, model: Model, settings: dict) -> dict[int, dict]:
    """Per latency batch size: {median ms per sample over the timed calls, "median", number of calls, each call's ms
    per sample} (`student.latency.time_calls`). A median, so a burst of load on a shared machine moves it less than
    a mean; the calls let reports put an interval on speed-ups."""
    task = get_task(cfg.task)
    rows = [dict(r) for r in open_source(cfg.data, cfg.split, cfg.columns, task, cfg.image_root, cfg.limit)]
    timed = rows[: cfg.latency_limit] if cfg.latency_limit is not None else rows
    latency = {}
    for b in cfg.latency_batch_sizes:
        ms = time_calls(model, task, timed, b, settings).ms_per_sample
        latency[b] = {"ms_per_sample": statistics.median(ms), "statistic": "median", "calls": len(ms), "call_ms": ms}
    return latency


def _run_evaluate(cfg: EvaluateStageConfig, out: Path) -> None:
    task = get_task(cfg.task)
    model, candidates = open_for_task(cfg.model, task, cfg.revision, cfg.answers, cfg, cfg.device)
    settings = model.settings(task, candidates, {"num_beams": cfg.num_beams, "vqa_mode": cfg.vqa_mode})
    quality = evaluate(dataclasses.replace(cfg, out=str(out / PREDICTIONS_FILE)), opened=(model, candidates))
    latency = {quality.batch_size: {"ms_per_sample": quality.ms_per_sample, "statistic": "mean", "calls": 1}}
    if cfg.latency_limit != 0:
        latency = measure_latency(cfg, model, settings)
    latency_batch = next(iter(latency))  # the table's ms/sample column: the first batch size

    metric = next(iter(quality.metrics))
    record = {
        "task": quality.task, "model": quality.model, "model_type": quality.kind, "decoding": quality.decoding,
        "autoregressive": model.autoregressive,
        "metric": metric, "score": quality.metrics[metric], "metrics": quality.metrics,
        "metric_implementation": quality.metric_implementation,
        "num_samples": quality.num_samples, "ms_per_sample": latency[latency_batch]["ms_per_sample"],
        "latency_statistic": latency[latency_batch]["statistic"], "latency_batch_size": latency_batch,
        "latency_calls": latency[latency_batch]["calls"], "latency_threads": torch.get_num_threads(),
        "latency": latency, "batched_ms_per_sample": quality.ms_per_sample, "batch_size": quality.batch_size,
        "interval": quality.interval, "row_ids": quality.row_ids, "row_scores": quality.row_scores,
    }
    (out / METRICS_FILE).write_text(json.dumps(record, indent=2) + "\n")


def builtin_kinds() -> list[StageKind]:
    """The built-in kinds, for `pipelines.stages.stage_kinds()` to register."""
    return [
        StageKind("data", ShapesConfig, lambda cfg, out: write_shapes(out, cfg), light=True),
        StageKind("train-teacher", TeacherTrainConfig, lambda cfg, out: train_teacher(cfg), out_field="output_dir",
                  fixed={"resume": True}, resumable=True, non_result=TRAIN_NON_RESULT,
                  resume_state=(CHECKPOINT_DIR,)),
        StageKind("distill", DistillConfig, lambda cfg, out: run_distill(cfg), out_field="out", resumable=True,
                  non_result=DISTILL_NON_RESULT),
        StageKind("train-student", StudentTrainConfig, lambda cfg, out: train_student(cfg), out_field="output_dir",
                  fixed={"resume": True}, resumable=True, non_result=TRAIN_NON_RESULT,
                  resume_state=(CHECKPOINT_DIR,)),
        StageKind("evaluate", EvaluateStageConfig, _run_evaluate, exclusive=True),  # it times the model
        StageKind("baseline", BaselineConfig, run_baseline, light=True),
        StageKind("report", ReportConfig, run_report, light=True),
    ]
