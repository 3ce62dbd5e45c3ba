"""Evaluate and predict with any model behind the seam (`distill.seam.Model`): the NARVL student (PyTorch or its ONNX
export), the OFA teacher, or any transformers teacher that distils. The model decodes as it always does for the
task (NARVL: one pass + CTC; OFA: its evaluation recipe; a transformers teacher: its family's prompt and decoding),
and the task scores its canonical predictions.

Inputs (the data split, the image, the text, the answer list) are checked before any weight is read. A row whose
image cannot be read is skipped and counted (`skipped`), not fatal.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from distill.errors import UserError
from distill.images import load_image
from distill.jsonio import atomic_write_text
from distill.loader import load_model
from distill.prediction import Prediction
from distill.seam import Model, prepare_rows
from distill.sources import open_source
from distill.tasks import get_task

from .data import SkipLog, reference_problem
from .eval_config import EvalConfig, PredictConfig
from .intervals import mean_interval

__all__ = ["EvalResult", "RowPredictions", "Answer", "predict_rows", "make_eval_fn", "open_for_task", "evaluate",
           "predict", "prediction_record"]


@dataclass
class RowPredictions:
    """What `predict_rows` returns: predictions for the rows that could be read, and the skipped ones."""

    predictions: list[Prediction]
    """The model's best prediction per predicted row (canonical form), aligned with `kept`."""
    scored: list[Any]
    """What the task metric scores (`Task.scored`): text, box or label, aligned with `kept`."""
    kept: list[int]
    """Positions (in the rows given) of the predicted rows."""
    skipped: list[dict]
    """`{"id", "index", "reason"}` of each row left out (`index`: its position): an unreadable image, an empty
    required text, or no reference when references are needed."""
    seconds: float
    """Time spent in `Model.infer` (inputs prepared beforehand; image decoding excluded)."""


def _sync(model: Model) -> Callable[[], None]:
    device = getattr(model, "device", None)
    return torch.cuda.synchronize if device is not None and torch.device(device).type == "cuda" else (lambda: None)


def predict_rows(model: Model, task, rows: Sequence[dict], settings: dict, batch_size: int = 16,
                 progress: bool = False, scored: bool = False) -> RowPredictions:
    """Predict every usable row (its image readable; when `scored`, a reference to score against), `batch_size`
    usable rows per `Model.infer` call; the others are returned as `skipped`. The weights load only when some row
    has a reference to score (before the progress bar starts, so their errors print alone)."""
    out = RowPredictions([], [], [], [], 0.0)
    usable = []
    for i, row in enumerate(rows):
        why = reference_problem(task, row) if scored else None
        (out.skipped.append({"id": str(row.get("id")), "index": i, "reason": why}) if why else usable.append(i))
    if not usable:
        return out
    model.load()
    sync = _sync(model)
    for start in tqdm(range(0, len(usable), batch_size), desc=f"evaluate {model.kind}", disable=not progress):
        chunk = usable[start: start + batch_size]
        prep = prepare_rows(model, [rows[i] for i in chunk], task)
        out.skipped += [{"id": str(rows[chunk[k]].get("id")), "index": chunk[k], "reason": why} for k, why in prep.bad]
        if prep.inputs is None:
            continue
        sync()
        t0 = time.perf_counter()
        nbests = model.infer(prep.inputs, task, settings)
        sync()
        out.seconds += time.perf_counter() - t0
        for k, best in zip(prep.good, nbests):
            out.predictions.append(best[0])
            out.scored.append(task.scored(best[0], rows[chunk[k]]))
            out.kept.append(chunk[k])
    out.skipped.sort(key=lambda s: s["index"])
    return out


def _nothing_usable(n: int, skipped: Sequence[dict]) -> UserError:
    return UserError(f"none of the {n} rows is usable (unreadable image, empty text or no reference); first: "
                     f"{skipped[0]['reason']}")


def make_eval_fn(task, rows: Sequence[dict], wrap: Callable[[torch.nn.Module], Model], batch_size: int = 16,
                 overrides: dict | None = None, candidates: Sequence[str] | None = None):
    """An `eval_fn(model, accelerator)` for `student.trainer.train`: `wrap` puts the module being trained behind
    the seam (`NARVLStudent.from_module`, `OFATeacher.from_module`); rows are split over processes (row i on
    process i % world), predictions gathered as objects (exact on uneven splits), the task metric computed on all."""

    def eval_fn(module, accelerator) -> dict[str, float]:
        model = wrap(module)
        settings = model.settings(task, candidates, overrides)
        idx = list(range(accelerator.process_index, len(rows), accelerator.num_processes))
        res = predict_rows(model, task, [rows[i] for i in idx], settings, batch_size, scored=True)
        pairs = gather_object([(idx[k], p) for k, p in zip(res.kept, res.scored)])  # a single process: as is
        skipped = gather_object([dict(s, index=idx[s["index"]]) for s in res.skipped])
        if not pairs:
            raise _nothing_usable(len(rows), skipped)
        pairs.sort(key=lambda x: x[0])
        metrics = task.training_metrics([p for _, p in pairs], [rows[i] for i, _ in pairs])
        return metrics | ({"skipped_rows": float(len(skipped))} if skipped else {})

    return eval_fn


def open_for_task(name: str, task, revision: str | None = None, answers: str | None = None, options=None,
                  device: str | None = None) -> tuple[Model, list[str] | None]:
    """(the model, the answer list it decodes over or None): the answer list is read (and required) only for a
    model that decodes an answer-list task over one (OFA on VQA); a model that answers freely refuses `answers`."""
    model = load_model(name, revision=revision, task=task, options=options, device=device)
    if model.decodes_over_answer_list and task.answer_space == "answer_list":
        return model, task.answer_list(answers)
    if answers:
        raise UserError(f"`answers` applies to models that decode {task.name} over an answer list (OFA); "
                        f"{model.kind} does not")
    return model, None


def prediction_record(task, row: dict, prediction: Prediction, scored: Any) -> dict[str, Any]:
    """One line of a predictions file: the row's id, its text inputs and references, the model's output and what
    the metric scores."""
    record = {"id": row["id"]}
    record.update({c: row.get(c) for c in task.prompt_columns()})
    record.update({c: row.get(c) for c in task.reference_columns if c in row})
    record.update(output=prediction.text, prediction=scored)
    return record


@dataclass
class EvalResult:
    """What `evaluate` returns (and `narvl-pipe evaluate` prints)."""

    task: str
    """Task name."""
    model: str
    """Model folder or Hub id."""
    kind: str
    """The model family (`ofa`, `narvl`, `git`, ...)."""
    decoding: str
    """How the model decoded (`Model.describe`: "AR beam 5", "one pass + CTC", ...)."""
    metrics: dict[str, float]
    """The task metric(s), e.g. `{"cider": ...}`."""
    ms_per_sample: float
    """`Model.infer` time per sample (image decoding excluded), at `batch_size`."""
    num_samples: int
    """Rows evaluated."""
    batch_size: int
    """Batch size the latency was measured at."""
    settings: dict = field(default_factory=dict)
    """The decoding settings (JSON-able ones)."""
    metric_implementation: str = ""
    """Which implementation computed `metrics` (e.g. "pycocoevalcap 1.2, Java PTB tokenizer")."""
    predictions_path: str | None = None
    """JSONL of predictions, when written."""
    model_revision: str | None = None
    """Hub commit of `model` when it is a Hub id."""
    predictions: list[Any] = field(default_factory=list, repr=False)
    """What the metric scored, aligned with the scored rows (the rows minus the skipped ones)."""
    row_ids: list[str] = field(default_factory=list, repr=False)
    """Ids of the scored rows, aligned with `predictions` (reports pair two systems on them)."""
    row_scores: list[float] | None = field(default=None, repr=False)
    """Per-row scores whose mean is the headline metric (`Task.row_scores`); None when the task gives none."""
    interval: dict[str, Any] | None = None
    """95% bootstrap interval of the headline metric over rows (`student.intervals.mean_interval`)."""
    num_skipped: int = 0
    """Rows left out: their image could not be read, or they have no reference to score against."""
    skipped: list[dict] = field(default_factory=list, repr=False)
    """`{"id", "index", "reason"}` of each skipped row."""
    skipped_path: str | None = None
    """JSONL of the skipped rows (next to the predictions), when written."""

    @property
    def score(self) -> float:
        """The (first) task metric."""
        return next(iter(self.metrics.values()))

    def line(self) -> str:
        metrics = " ".join(f"{k}={v:.4g}" for k, v in self.metrics.items())
        if self.metrics:
            metrics += (f" (95% CI {self.interval['low']:.4g}-{self.interval['high']:.4g})" if self.interval
                        else " (no interval: the task gives no per-row scores)")
        line = (f"{self.task} {self.kind} ({self.decoding}) {self.model}: {metrics} | {self.ms_per_sample:.2f} "
                f"ms/sample (batch {self.batch_size}, {self.num_samples} samples) | metric: "
                f"{self.metric_implementation}")
        if self.num_skipped:
            where = f"see {self.skipped_path}" if self.skipped_path else f"first: {self.skipped[0]['reason']}"
            line += f" | {self.num_skipped} unusable rows skipped ({where})"
        return line

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("predictions")
        d.pop("skipped")
        return d


def _jsonable_settings(settings: dict) -> dict:
    return {k: (len(v) if k == "candidates" else v) for k, v in settings.items()
            if isinstance(v, (int, float, str, bool, list, type(None)))}


def _write_predictions(out: Path, task, rows: list[dict], res: RowPredictions) -> SkipLog:
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "".join(json.dumps(prediction_record(task, rows[i], p, s), default=str) + "\n"
                                   for i, p, s in zip(res.kept, res.predictions, res.scored)))
    skip_log = SkipLog(out.with_name(out.stem + ".skipped.jsonl"))
    skip_log.path.unlink(missing_ok=True)  # a previous evaluation's skips are not this one's
    for s in res.skipped:
        skip_log.add(s["index"], s["id"], s["reason"])
    return skip_log


def evaluate(cfg: EvalConfig, progress: bool = True, score: bool = True,
             opened: tuple[Model, list[str] | None] | None = None) -> EvalResult:
    """Score `cfg.model` (a folder or a Hub id, at `cfg.revision`) on `cfg.split` of `cfg.data` with the task metric
    and the latency per sample; optionally write predictions JSONL. `score=False` skips the metric; `opened`: the
    model and its answer list when the caller opened them already (`open_for_task`)."""
    task = get_task(cfg.task)
    # Inputs first: a bad model folder, split, column or answer list fails before any weight is read.
    model, candidates = opened or open_for_task(cfg.model, task, cfg.revision, cfg.answers, cfg, cfg.device)
    settings = model.settings(task, candidates, {"num_beams": cfg.num_beams, "vqa_mode": cfg.vqa_mode})
    rows = [dict(r) for r in open_source(cfg.data, cfg.split, cfg.columns, task, cfg.image_root, cfg.limit)]
    res = predict_rows(model, task, rows, settings, cfg.batch_size, progress, scored=True)
    if not res.kept:
        raise _nothing_usable(len(rows), res.skipped)
    scored_rows = [rows[i] for i in res.kept]
    row_scores = task.row_scores(res.scored, scored_rows) if score else None
    source = model.identity.source
    result = EvalResult(task=task.name, model=str(source.get("id", cfg.model)), kind=model.kind,
                        decoding=model.describe(task, settings), settings=_jsonable_settings(settings),
                        metrics=task.evaluate(res.scored, scored_rows) if score else {},
                        metric_implementation=task.metric_implementation(scored_rows) if score else "",
                        ms_per_sample=1000.0 * res.seconds / len(scored_rows), num_samples=len(scored_rows),
                        batch_size=cfg.batch_size, predictions=res.scored, num_skipped=len(res.skipped),
                        skipped=res.skipped, model_revision=source.get("revision"),
                        row_ids=[str(r["id"]) for r in scored_rows], row_scores=row_scores,
                        interval=mean_interval(row_scores).to_dict() if row_scores is not None else None)
    if cfg.out is not None:
        skip_log = _write_predictions(Path(cfg.out), task, rows, res)
        result.predictions_path = str(cfg.out)
        if res.skipped:
            result.skipped_path = str(skip_log.path)
    return result


@dataclass
class Answer:
    """One prediction of `predict`."""

    output: str
    """The decoded text (bins for grounding)."""
    prediction: Any
    """What the task metric scores: caption/answer text, box [x0, y0, x1, y1] in image pixels (or None), label."""


def predict(cfg: PredictConfig) -> Answer:
    """Predict for one image: `cfg.text` is the task's first text field (question, region text, hypothesis...),
    `cfg.fields` any of its text fields by name (entailment's premise)."""
    task = get_task(cfg.task)
    # Inputs first: a bad image, a missing text or answer list fails before any weight is read.
    load_image(cfg.image, name=cfg.image)
    row = {"id": "predict", "image": cfg.image, **request_fields(task, cfg.text, cfg.fields)}
    model, candidates = open_for_task(cfg.model, task, cfg.revision, cfg.answers, cfg, cfg.device)
    settings = model.settings(task, candidates, {"num_beams": cfg.num_beams, "vqa_mode": cfg.vqa_mode})
    res = predict_rows(model, task, [row], settings, 1)
    if res.skipped:
        raise UserError(res.skipped[0]["reason"])
    return Answer(output=res.predictions[0].text, prediction=res.scored[0])


def request_fields(task, text: str | None, fields: dict[str, str]) -> dict[str, str]:
    """The task's text fields of a request: `text` fills the first (`Task.text_columns[0]`), `fields` any by name;
    a required one missing, or a field the task does not read, is refused."""
    names = list(task.text_columns)
    unknown = sorted(set(fields) - set(names))
    if unknown:
        raise UserError(f"task {task.name} reads no field {unknown}; its text fields: {names or 'none'}")
    values = dict(fields)
    if text is not None:
        if not names:
            raise UserError(f"task {task.name} takes no text (only the image)")
        values[names[0]] = text
    for name in names:
        value = values.get(name)
        if value is not None and not isinstance(value, str):
            raise UserError(f"field {name!r} must be a string, got {type(value).__name__}")
        if name not in task.optional_columns and not (value or "").strip():
            raise UserError(f"task {task.name} needs the text field {name!r}"
                            + (" (--text)" if name == names[0] else f" (--field {name}=...)"))
        values[name] = value or ""
    return values
