"""Evaluate and predict with either model: the NARVL student (one pass + CTC collapse) or the AR OFA teacher
(`generate()` with OFA's evaluation settings; entailment scores the candidates, as OFA does).

A model folder is one `save_pretrained` folder holding the model, its tokenizer and its image processor; the kind is
read from `config.json` (`model_type` `narvl` or `ofa`). Inputs (the data split, the image, the text) are checked
before the model is loaded. A row whose image cannot be read is skipped and counted (`skipped`), not fatal.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from distill.errors import UserError
from distill.hub_ids import resolve_model_folder
from distill.jsonio import atomic_write_text
from distill.tasks.base import ids_to_text
from distill.ofa.processing_ofa import OFAProcessor
from student.intervals import mean_interval

__all__ = ["LoadedModel", "EvalResult", "Prediction", "RowPredictions", "model_kind", "check_model_folder",
           "load_model", "save_model_folder", "decode_batch", "predict_rows", "make_eval_fn", "evaluate", "predict"]

KINDS = ("narvl", "ofa")


@dataclass
class LoadedModel:
    """A model with what it needs to read inputs."""

    model: torch.nn.Module
    """`NARVLModel` or `OFAModel`, in eval mode."""
    processor: OFAProcessor
    """The `OFAProcessor` saved with the model: OFA tokenizer + `OFAImageProcessor`."""
    kind: str
    """`narvl` or `ofa`."""
    identity: dict = field(default_factory=dict)
    """`{"id": folder}`, or `{"id": hub id, "revision": commit}` (`distill.hub_ids.resolve_model_folder`)."""

    @property
    def tokenizer(self) -> Any:
        """The processor's OFA tokenizer."""
        return self.processor.tokenizer

    @property
    def image_processor(self) -> Any:
        """The processor's `OFAImageProcessor` (its `size` is the input resolution)."""
        return self.processor.image_processor


def model_kind(model_dir: str | os.PathLike) -> str:
    """`narvl` or `ofa`, from the folder's `config.json`."""
    cfg = Path(model_dir) / "config.json"
    if not cfg.is_file():
        raise UserError(f"{model_dir} is not a model folder (no config.json)")
    kind = json.loads(cfg.read_text()).get("model_type")
    if kind not in KINDS:
        raise UserError(f"{model_dir}: model_type {kind!r} is neither narvl nor ofa")
    return kind


def check_model_folder(model_dir: str | os.PathLike, task=None) -> str:
    """The folder's kind (`narvl`/`ofa`) after checking, without loading anything, that it has what `load_model`
    reads: config.json and the image processor (optional with `task`: OFA-Sys Hub folders have none, and get OFA's
    preprocessing at the task's resolution)."""
    kind = model_kind(model_dir)
    if task is None and not (Path(model_dir) / "preprocessor_config.json").is_file():
        raise UserError(f"{model_dir} has no image processor (preprocessor_config.json)")
    return kind


def load_model(model_dir: str | os.PathLike, device: str | torch.device | None = None,
               revision: str | None = None, task=None) -> LoadedModel:
    """Load a NARVL or OFA folder, a Hub id (through the HF cache, at `revision`), or a NARVL ONNX export
    (`narvl-pipe export`, run by onnxruntime), with its tokenizer and image processor (device: CUDA when available).
    A checkpoint without an image processor (the OFA-Sys Hub folders) gets OFA's at `task`'s resolution."""
    from distill.loading import load_pretrained
    from distill.ofa.processing_ofa import load_ofa_processor
    from student.export import is_exported

    model_dir, identity = resolve_model_folder(os.fspath(model_dir), revision, field="model")
    if is_exported(model_dir):
        from student.onnx_model import load_exported

        return load_exported(model_dir, device)
    kind = check_model_folder(model_dir, task)
    if kind == "narvl":
        from student.modeling_narvl import NARVLModel as cls
    else:
        from distill.ofa import OFAModel as cls
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_pretrained(cls, model_dir).to(device).eval()
    processor = load_ofa_processor(model_dir, size=task.resolution if task is not None else None)
    return LoadedModel(model, processor, kind, identity)


def save_model_folder(model, processor: OFAProcessor, out: str | os.PathLike,
                      train_config: dict[str, Any] | None = None) -> Path:
    """Write one usable folder: model (safetensors), the `OFAProcessor` (`AutoProcessor.from_pretrained(out)`) with
    its tokenizer and image processor, and `train_config.json`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    processor.image_processor.save_pretrained(str(out))  # preprocessor_config.json too: older readers use it
    if train_config is not None:
        (out / "train_config.json").write_text(json.dumps(train_config, indent=1, default=str))
    return out


def _generate_kwargs(model, task, tokenizer, num_beams: int | None, candidates: Sequence[str] | None) -> dict:
    kwargs = dict(task.generate_kwargs(tokenizer, candidates) if candidates is not None
                  else task.generate_kwargs(tokenizer))
    if num_beams is not None:
        kwargs["num_beams"] = num_beams
    return kwargs


@torch.inference_mode()
def decode_batch(lm: LoadedModel, task, inputs: dict[str, torch.Tensor], num_beams: int | None = None,
                 candidates: Sequence[str] | None = None) -> list[list[int]]:
    """Output token ids per sample (no start token; for NARVL, CTC-collapsed and cut at EOS).

    NARVL: one forward pass, greedy CTC by NARVL's rule of the task (`student.decoding`; `num_beams` > 1: CTC prefix
    beam search, caption and VQA only). OFA: `generate()` with the task's
    OFA settings (`num_beams` overrides), or candidate scoring for entailment.
    """
    model, tok = lm.model, lm.tokenizer
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    if lm.kind == "narvl":
        if (num_beams or 1) > 1 and not task.ctc_beam_search:
            raise UserError(f"num_beams {num_beams}: NARVL decodes {task.name} greedily (its rule does not merge "
                            "repeats, so there is no CTC prefix search); leave num_beams unset")
        return model.decode(**inputs, num_beams=num_beams or 1, bin_ids=task.ctc_keep_ids(tok))
    settings = _generate_kwargs(model, task, tok, num_beams, candidates)
    nbests = task.ofa_inference(model, tok, inputs, settings, 1)  # VQA / entailment: OFA's recipe, as distill
    if nbests is not None:
        return [best[0][0] for best in nbests]
    out = model.generate(**inputs, **settings)
    return out[:, 1:].tolist()


@dataclass
class RowPredictions:
    """What `predict_rows` returns: predictions for the rows that could be read, and the skipped ones."""

    predictions: list[Any]
    """As `task.decode` returns them, aligned with `kept`."""
    texts: list[str]
    """Decoded output texts, aligned with `kept`."""
    kept: list[int]
    """Positions (in the rows given) of the predicted rows."""
    skipped: list[dict]
    """`{"id", "index", "reason"}` of each row left out (`index`: its position): unreadable image, or no reference
    when references are needed."""
    seconds: float
    """Time spent in the model and decoding (image loading excluded)."""


def predict_rows(lm: LoadedModel, task, rows: Sequence[dict], batch_size: int = 16, num_beams: int | None = None,
                 candidates: Sequence[str] | None = None, progress: bool = False,
                 scored: bool = False) -> RowPredictions:
    """Predict every row whose image can be read (and, when `scored`, that has a reference to score against); the
    others are returned as `skipped`."""
    from tqdm.auto import tqdm

    from student.data import encode_readable, reference_problem

    out = RowPredictions([], [], [], [], 0.0)
    sync = torch.cuda.synchronize if lm.model.device.type == "cuda" else (lambda: None)
    for start in tqdm(range(0, len(rows), batch_size), desc=f"evaluate {lm.kind}", disable=not progress):
        chunk, bad = [], []
        for i, r in enumerate(rows[start: start + batch_size], start):
            why = reference_problem(task, r) if scored else None
            if why:
                bad.append((i, r.get("id"), why))
            else:
                chunk.append((i, dict(r)))
        inputs, kept, unreadable = encode_readable([r for _, r in chunk], task, lm.processor)
        bad += [(chunk[k][0], chunk[k][1].get("id"), why) for k, why in unreadable]
        out.skipped += [{"id": str(rid), "index": i, "reason": why} for i, rid, why in sorted(bad)]
        if inputs is None:
            continue
        sync()
        t0 = time.perf_counter()
        outputs = decode_batch(lm, task, inputs, num_beams, candidates)
        sync()
        out.seconds += time.perf_counter() - t0
        for ids, k in zip(outputs, kept):
            index, row = chunk[k]
            out.predictions.append(task.decode(ids, row, lm.tokenizer))
            out.texts.append(ids_to_text(ids, lm.tokenizer).strip())
            out.kept.append(index)
    return out


def _nothing_readable(n: int, skipped: Sequence[dict]) -> UserError:
    return UserError(f"none of the {n} rows is usable (unreadable image or no reference); first: "
                     f"{skipped[0]['reason']}")


def make_eval_fn(task, rows: Sequence[dict], processor: OFAProcessor, kind: str, batch_size: int = 16,
                 num_beams: int | None = None, candidates: Sequence[str] | None = None):
    """An `eval_fn(model, accelerator)` for `student.trainer.train`: rows are split over processes (row i on process
    i % world), predictions gathered as objects (exact on uneven splits), and the task metric computed on all."""

    def eval_fn(model, accelerator) -> dict[str, float]:
        from accelerate.utils import gather_object

        lm = LoadedModel(model, processor, kind)
        idx = list(range(accelerator.process_index, len(rows), accelerator.num_processes))
        res = predict_rows(lm, task, [rows[i] for i in idx], batch_size, num_beams, candidates, scored=True)
        pairs = gather_object([(idx[k], p) for k, p in zip(res.kept, res.predictions)])  # a single process: as is
        skipped = gather_object([dict(s, index=idx[s["index"]]) for s in res.skipped])
        if not pairs:
            raise _nothing_readable(len(rows), skipped)
        pairs.sort(key=lambda x: x[0])
        metrics = task.training_metrics([p for _, p in pairs], [rows[i] for i, _ in pairs])
        return metrics | ({"skipped_rows": float(len(skipped))} if skipped else {})

    return eval_fn


@dataclass
class EvalResult:
    """What `evaluate` returns (and `narvl-pipe evaluate` prints)."""

    task: str
    """Task name."""
    model: str
    """Model folder."""
    kind: str
    """`narvl` or `ofa`."""
    metrics: dict[str, float]
    """The task metric(s), e.g. `{"cider": ...}`."""
    ms_per_sample: float
    """Model + decoding time per sample (excludes image loading), at `batch_size`."""
    num_samples: int
    """Rows evaluated."""
    batch_size: int
    """Batch size the latency was measured at."""
    num_beams: int | None
    """Beam size used (None: the task's OFA setting for AR, greedy for NARVL)."""
    metric_implementation: str = ""
    """Which implementation computed `metrics` (e.g. "pycocoevalcap 1.2, Java PTB tokenizer")."""
    predictions_path: str | None = None
    """JSONL of predictions, when written."""
    model_revision: str | None = None
    """Hub commit of `model` when it is a Hub id."""
    predictions: list[Any] = field(default_factory=list, repr=False)
    """Predictions aligned with the scored rows (the rows minus the skipped ones)."""
    num_skipped: int = 0
    """Rows left out: their image could not be read, or they have no reference to score against."""
    skipped: list[dict] = field(default_factory=list, repr=False)
    """`{"id", "index", "reason"}` of each skipped row."""
    skipped_path: str | None = None
    """JSONL of the skipped rows (next to the predictions), when written."""
    row_ids: list[str] = field(default_factory=list, repr=False)
    """Ids of the scored rows, aligned with `predictions` and `row_scores`."""
    row_scores: list[float] | None = field(default=None, repr=False)
    """Each scored row's score (`Task.row_scores`, their mean is the headline metric): what reports pair; None when
    the task gives none."""
    interval: dict[str, Any] | None = None
    """95% bootstrap interval of the headline metric over the rows (`student.intervals.mean_interval`); None when
    the task gives no per-row scores."""

    @property
    def score(self) -> float:
        """The (first) task metric."""
        return next(iter(self.metrics.values()))

    def line(self) -> str:
        metrics = " ".join(f"{k}={v:.4g}" for k, v in self.metrics.items())
        if self.metrics:
            metrics += (f" (95% CI {self.interval['low']:.4g}-{self.interval['high']:.4g})" if self.interval
                        else " (no interval: the task gives no per-row scores)")
        line = (f"{self.task} {self.kind} {self.model}: {metrics} | {self.ms_per_sample:.2f} ms/sample "
                f"(batch {self.batch_size}, {self.num_samples} samples) | metric: {self.metric_implementation}")
        if self.num_skipped:
            where = f"see {self.skipped_path}" if self.skipped_path else f"first: {self.skipped[0]['reason']}"
            line += f" | {self.num_skipped} unusable rows skipped ({where})"
        return line

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("predictions")
        d.pop("skipped")
        return d


def _candidates(task, answers: str | None) -> list[str] | None:
    """The answer list an AR model decodes over (one rule for distill and evaluate: `Task.answer_list`)."""
    return task.answer_list(answers) if task.needs_answer_list else None


def evaluate(model: str | os.PathLike, task: str, data: str | os.PathLike, split: str = "validation",
             batch_size: int = 16, num_beams: int | None = None, limit: int | None = None,
             out: str | os.PathLike | None = None, answers: str | None = None,
             device: str | None = None, progress: bool = True, score: bool = True,
             revision: str | None = None) -> EvalResult:
    """Score a NARVL or OFA folder (or a Hub id, resolved through the HF cache at `revision`) on `split` of `data`
    with the task metric; optionally write predictions JSONL.

    `answers`: VQA candidate list for the AR teacher (OFA's trainval_ans2label.pkl, or a text/JSON list; required
    for an AR VQA model, as for `narvl-pipe distill`). `score=False` skips the metric (latency-only runs).
    """
    from distill.sources import open_source
    from distill.tasks import get_task
    from student.data import SkipLog

    t = get_task(task)
    model, identity = resolve_model_folder(os.fspath(model), revision, field="model")
    kind = check_model_folder(model, t)  # inputs first: a bad split or column fails before any weight is read
    ds = open_source(data, split, None, t, limit=limit)
    rows = [dict(r) for r in ds]
    candidates = _candidates(t, answers) if kind == "ofa" else None
    lm = load_model(model, device, task=t)
    res = predict_rows(lm, t, rows, batch_size, num_beams, candidates, progress, scored=True)
    if not res.kept:
        raise _nothing_readable(len(rows), res.skipped)
    scored = [rows[i] for i in res.kept]
    row_scores = t.row_scores(res.predictions, scored) if score else None
    result = EvalResult(task=t.name, model=str(identity["id"] if "revision" in identity else model), kind=lm.kind,
                        metrics=t.evaluate(res.predictions, scored) if score else {},
                        metric_implementation=t.metric_implementation(scored) if score else "",
                        ms_per_sample=1000.0 * res.seconds / len(scored), num_samples=len(scored),
                        batch_size=batch_size, num_beams=num_beams, predictions=res.predictions,
                        num_skipped=len(res.skipped), skipped=res.skipped, model_revision=identity.get("revision"),
                        row_ids=[str(r["id"]) for r in scored], row_scores=row_scores,
                        interval=mean_interval(row_scores).to_dict() if row_scores is not None else None)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, "".join(json.dumps({"id": row["id"], "output": text, "prediction": pred}) + "\n"
                                       for row, pred, text in zip(scored, res.predictions, res.texts)))
        result.predictions_path = str(out)
        skip_log = SkipLog(out.with_name(out.stem + ".skipped.jsonl"))
        skip_log.path.unlink(missing_ok=True)  # a previous evaluation's skips are not this one's
        for s in res.skipped:
            skip_log.add(s["index"], s["id"], s["reason"])
        if res.skipped:
            result.skipped_path = str(skip_log.path)
    return result


@dataclass
class Prediction:
    """One prediction of `predict`."""

    output: str
    """The decoded text (bins for grounding)."""
    prediction: Any
    """What the task metric scores: caption/answer text, box [x0, y0, x1, y1] in image pixels (or None), label."""


def predict(model: str | os.PathLike | LoadedModel, task: str, image: Any, text: str | None = None,
            premise: str | None = None, num_beams: int | None = None, answers: str | None = None,
            device: str | None = None, revision: str | None = None) -> Prediction:
    """Predict for one image: `text` is the question (vqa), the region text (grounding) or the hypothesis
    (entailment, with an optional `premise`). VQA with the AR teacher needs `answers` (candidate list file)."""
    from distill.images import load_image
    from distill.tasks import get_task

    t = get_task(task)
    if not isinstance(model, LoadedModel):
        model, _ = resolve_model_folder(os.fspath(model), revision, field="model")
    kind = model.kind if isinstance(model, LoadedModel) else check_model_folder(model, t)
    # Inputs first: a bad image, a missing text or answer list fails before any weight is read.
    load_image(image, name=image if isinstance(image, (str, os.PathLike)) else None)
    row: dict[str, Any] = {"id": "predict", "image": image}
    need, *optional = t.text_columns or (None,)
    if need:
        if not text:
            raise UserError(f"--text is required for task {t.name} (the {need.replace('_', ' ')})")
        row[need] = text
    if "premise" in optional:
        row["premise"] = premise or ""
    candidates = None
    if t.needs_answer_list and kind == "ofa":
        if not answers:
            raise UserError(f"{t.name} with the AR teacher needs `answers` FILE (its candidate answer list)")
        candidates = _candidates(t, answers)
    lm = model if isinstance(model, LoadedModel) else load_model(model, device, task=t)
    res = predict_rows(lm, t, [row], 1, num_beams, candidates)
    return Prediction(output=res.texts[0], prediction=res.predictions[0])
