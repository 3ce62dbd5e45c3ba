"""`train-student`: train a NARVL student with Query-CTC on teacher targets (KD) or on raw references.

The student starts from an OFA checkpoint (`NARVLModel.from_ofa`: every weight but the queries and the blank row)
or continues a NARVL folder; either may be a local folder or a Hub id (resolved through the HF cache). Every unset
optimisation field takes NARVL's official recipe for the task and the init's size (`student.presets`). The result is
one usable folder: model, tokenizer, image processor and `train_config.json` (the resolved settings, the recipe
used, the filter counts and the final metrics).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env, set_seed

from distill.errors import UserError
from distill.hub_ids import resolve_model_folder
from distill.jsonio import jsonable
from distill.loading import load_pretrained
from distill.ofa import OFAModel
from distill.ofa.processing_ofa import load_ofa_processor
from distill.loader import model_type
from distill.tasks import get_task
from student.data import (FilterReport, SkipLog, TaskRows, collate, filter_rows, load_training_data,
                          target_vocabulary)
from student.evaluate import make_eval_fn
from student.modeling_narvl import NARVLModel
from student.presets import drop_path_fields, ofa_size, resolve
from student.run_folder import write_run_folder
from student.runner import NARVLStudent
from student.stream_rows import StreamRows, open_stream
from student.train_config import TrainConfig, TrainResult
from student.train_eval import eval_rows
from student.train_fields import EvalFields, TrainDataFields
from student.train_setup import freeze_token_embeddings
from student.trainer import train

__all__ = ["StudentTrainConfig", "student_loss", "train_student", "resolve_student_config"]


@dataclass(kw_only=True)
class StudentTrainConfig(TrainDataFields, EvalFields, TrainConfig):
    """`narvl-pipe train-student` settings; the optimisation fields are those of `TrainConfig`, and its recipe
    fields left unset take NARVL's script for the task and the init's size (`student.presets`)."""

    task: str
    """caption, vqa, grounding or entailment."""
    data: str
    """Distilled dataset (`narvl-pipe distill` output, a pushed folder or Hub id), or a canonical source for raw."""
    init: str
    """OFA checkpoint (folder or Hub id; the student borrows its encoder and decoder), or a NARVL one to continue."""
    num_queries: int | None = None
    """Decoder queries N (default: the task's, caption 20, vqa 6, grounding 5, entailment 3)."""
    target_column: str = "target"
    """`target`: the teacher's outputs (KD); `references`: the raw labels (a seeded random caption per draw)."""
    min_teacher_logprob: float | None = None
    """Drop rows whose teacher sequence log-prob (`teacher_logprob`, summed over tokens) is lower."""
    max_target_len: int | None = None
    """Drop rows whose teacher target (EOS included) is longer."""
    tokenizer: str | None = None
    """Tokenizer folder (default: the one saved in `init`)."""
    resolution: int | None = None
    """Image side (default: the image processor saved in `init`, else the task's)."""
    label_smoothing: float | None = None
    """Query-CTC label smoothing (default: the task's, 0.1; entailment 0)."""
    dropout: float | None = None
    """Override the dropout of an OFA init (default: the checkpoint's; NARVL's recipe is 0.1)."""
    streaming: bool = False
    """Read `data` as a stream (a distill output folder, parquet files or URLs, a Hub id) instead of opening it
    whole: rows split by process, shuffled through `shuffle_buffer`, the stream position saved with each
    checkpoint (exact resume at the same process count). Needs `max_steps` unless the row count is recorded."""
    shuffle_buffer: int = 1000
    """Rows in the shuffle buffer of `streaming` (saved with each checkpoint)."""


def student_loss(model, batch, step: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Query-CTC (inside `NARVLModel.forward`); infeasible targets are counted, not dropped silently."""
    out = model(input_ids=batch["input_ids"], patch_images=batch["patch_images"], patch_masks=batch["patch_masks"],
                targets=batch["targets"], target_lengths=batch["target_lengths"], weights=batch["weights"])
    return out.loss, {"n_infeasible": out.n_infeasible, "n_samples": torch.tensor(batch["targets"].size(0))}


def _open_stream(cfg: StudentTrainConfig, state) -> tuple[Any, int | None]:
    """(this process's `datasets.IterableDataset` of `cfg.data`, the set's row count when recorded)."""
    if cfg.limit is not None or cfg.min_teacher_logprob is not None or cfg.max_target_len is not None:
        raise UserError("`limit`, `min_teacher_logprob` and `max_target_len` apply to a dataset opened whole; "
                        "with `streaming`, filter when distilling or train without them")
    ds = open_stream(cfg.data, cfg.split, state.process_index, state.num_processes)
    manifest = Path(cfg.data) / "manifest.json"
    rows = json.loads(manifest.read_text()).get("rows") if manifest.is_file() else None
    if rows is None and ds.info.splits and cfg.split in ds.info.splits:
        rows = ds.info.splits[cfg.split].num_examples or None
    return ds, rows


def resolve_student_config(cfg: StudentTrainConfig) -> tuple[StudentTrainConfig, Path, dict[str, Any]]:
    """(`cfg` with the recipe filled in, the init folder, a record of the init identity and recipe); no weights
    are loaded (the size is read from the init's config.json)."""
    init, identity = resolve_model_folder(cfg.init, cfg.init_revision, field="init")
    size = ofa_size(json.loads((init / "config.json").read_text()))
    resolved, recipe = resolve(cfg, "student", size)
    return resolved, init, {"init_identity": identity, "recipe": recipe}


def build_student(cfg: StudentTrainConfig, task, init: Path | None = None):
    """(NARVLModel, `OFAProcessor`) from `init` (default `cfg.init`; an OFA or a NARVL folder)."""
    init = Path(init or cfg.init)
    if not (init / "config.json").is_file():
        raise UserError(f"`init` {cfg.init}: not a model folder (no config.json)")
    eps = task.label_smoothing if cfg.label_smoothing is None else cfg.label_smoothing
    layers = drop_path_fields(cfg.drop_path)
    if model_type(init) == "narvl":
        model = load_pretrained(NARVLModel, init, **layers)
        if cfg.num_queries and cfg.num_queries != model.config.num_queries:
            raise UserError(f"`num_queries` {cfg.num_queries} differs from the NARVL init's {model.config.num_queries}")
        model.config.label_smoothing = eps
        if cfg.dropout is not None:
            raise UserError("`dropout` applies to an OFA init only (a NARVL init keeps its own)")
    else:
        extra = {} if cfg.dropout is None else {"dropout": cfg.dropout}
        model = NARVLModel.from_ofa(load_pretrained(OFAModel, init, **layers),
                                    num_queries=cfg.num_queries or task.num_queries, task=task.name,
                                    label_smoothing=eps, **extra)
    processor = load_ofa_processor(init, size=task.resolution, tokenizer=cfg.tokenizer)
    if cfg.resolution:
        processor.image_processor.size = cfg.resolution
    return model, processor


def train_student(cfg: StudentTrainConfig) -> TrainResult:
    """Train the student and write `cfg.output_dir` as one usable folder; returns the trainer's result."""
    cfg.validate()
    task = get_task(cfg.task)
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    if cfg.streaming:
        ds, num_rows = _open_stream(cfg, state)
        report = FilterReport(total=num_rows or 0)
    else:  # the data first: a bad source fails before a load
        ds = load_training_data(cfg.data, cfg.split, task, cfg.limit)
        ds, report = filter_rows(ds, cfg.min_teacher_logprob, cfg.max_target_len)
    cfg, init, provenance = resolve_student_config(cfg)
    set_seed(cfg.seed)  # the queries and blank row are drawn from it
    model, processor = build_student(cfg, task, init)
    tokenizer = processor.tokenizer
    if cfg.freeze_embeddings:
        freeze_token_embeddings(model)
    # Same CPU flag as the Accelerator reads: a PartialState made first without it stays single-process.
    main = state.is_main_process
    if main:
        print(f"training rows: {report.kept} of {report.total} (removed: {report.removed_logprob} below "
              f"--min-teacher-logprob, {report.removed_length} above --max-target-len)")
    skips = SkipLog.for_training(cfg.output_dir, cfg.resume)
    reencode, vocabulary = (target_vocabulary(cfg.data, ds, tokenizer) if cfg.target_column == "target"
                            else (False, ""))
    if main and vocabulary:
        print(vocabulary)
    rows = TaskRows(ds, task, processor, cfg.target_column, seed=cfg.seed, skips=skips,
                    reencode=reencode)
    if cfg.streaming:
        rows = StreamRows(ds, rows, cfg.seed, cfg.shuffle_buffer, report.total or None, state.process_index)
    eval_fn = None
    held_out = eval_rows(cfg, task)
    if held_out:
        eval_fn = make_eval_fn(task, held_out, partial(NARVLStudent.from_module, processor=processor),
                               cfg.eval_batch_size, {"num_beams": cfg.eval_num_beams})
    resolved = dataclasses.replace(
        cfg, num_queries=model.config.num_queries, label_smoothing=model.config.label_smoothing,
        resolution=processor.image_processor.size, drop_path=model.config.encoder_drop_path_rate)
    pad, bos = tokenizer.pad_token_id, tokenizer.bos_token_id
    run_config = jsonable(resolved)
    epoch = None if cfg.streaming else task.epoch_samples(ds)  # a stream: its recorded row count, if any
    result = train(model, student_loss, rows, resolved, collate_fn=partial(collate, pad_id=pad, bos_id=bos),
                   eval_fn=eval_fn, run_config=run_config, epoch_samples=epoch)
    run_config.update(result.resolved, **provenance)
    if result.is_main_process:
        infeasible = result.history[-1].get("total_n_infeasible", 0) if result.history else 0
        if infeasible:
            print(f"warning: {int(infeasible)} training samples did not fit in {model.config.num_queries} queries "
                  "(zero loss; see n_infeasible in log.jsonl)")
        record = {**run_config, "final_step": result.step, "eval": result.eval_metrics,
                  "epoch": {"rows": report.total, "samples": epoch or report.total,
                            "rule": "one sample per row (a stream)" if cfg.streaming else task.epoch_rule},
                  "filter": dataclasses.asdict(report) | {"kept": report.kept},
                  "n_infeasible_total": infeasible, "skipped_rows": skips.report(),
                  "kd_targets": _kd_targets(cfg.target_column, reencode, task)}
        write_run_folder(result, processor, cfg.output_dir, record)
    return result


def _kd_targets(target_column: str, reencode: bool, task) -> str:
    """What `train_config.json` says the student learned from."""
    if target_column != "target":
        return target_column
    if reencode or task.kd_targets_from_text:
        return "the teacher's `target` text, re-encoded in the student's tokenizer" + (
            f" after {task.kd_text_rule}" if task.kd_targets_from_text else "")
    return "the teacher's `target_ids`"
