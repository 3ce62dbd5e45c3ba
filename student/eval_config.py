"""`EvalConfig` and `PredictConfig`: what `narvl-pipe evaluate` and `predict` take (their options are generated from
these), with the model and decoding fields they share with `distill` declared once (`distill.seam.ModelOptions`,
`DecodingOptions`; `distill.config.SourceOptions`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from distill.config import SourceOptions
from distill.seam import DecodingOptions, ModelOptions

__all__ = ["EvalConfig", "ModelFields", "PredictConfig"]


@dataclass(kw_only=True)
class ModelFields(DecodingOptions, ModelOptions):
    """The model one scores or asks, and how it decodes."""

    model: str
    """Any model that distils or is distilled: a NARVL student, its ONNX export (`narvl-pipe export`), an OFA
    teacher or a transformers image-text teacher; a folder or a Hub id."""
    revision: str | None = None
    """Hub revision of `model` (ignored for a local folder)."""
    task: str
    """caption, vqa, grounding or entailment (or a registered task)."""
    device: str | None = None
    """Where the model runs (default: CUDA when available, else the CPU)."""


@dataclass(kw_only=True)
class EvalConfig(ModelFields, SourceOptions):
    """Score `model` on a split with the task metric and the latency per sample."""

    data: str
    """Evaluation source (any `distill.sources` SRC)."""
    split: str = "validation"
    """Split of `data`."""
    batch_size: int = 16
    """Batch size (the latency is per sample at this size)."""
    limit: int | None = None
    """Score only the first N rows."""
    out: str | None = None
    """Write the predictions as JSONL to this file (each row's id, text inputs, references, output and what the
    metric scored)."""


@dataclass(kw_only=True)
class PredictConfig(ModelFields):
    """One prediction for one image."""

    image: str
    """Image file."""
    text: str | None = None
    """The task's first text field: the question (vqa), region text (grounding), hypothesis (entailment)."""
    fields: dict[str, str] = field(default_factory=dict)
    """Any of the task's text fields by name, e.g. {"premise": "two shapes"} (entailment)."""
