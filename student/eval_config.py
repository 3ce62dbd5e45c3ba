"""`EvalConfig` and `PredictConfig`: what `narvl-pipe evaluate` and `predict` take (their options are generated from
these), with the model fields they share declared once. The fields are `student.evaluate.evaluate`'s and
`predict`'s keyword arguments: `evaluate(**dataclasses.asdict(cfg))`."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EvalConfig", "ModelFields", "PredictConfig"]


@dataclass(kw_only=True)
class ModelFields:
    """The model one scores or asks, and how it decodes."""

    model: str
    """NARVL student, its ONNX export (`narvl-pipe export`) or OFA teacher: a folder or a Hub id."""
    revision: str | None = None
    """Hub revision of `model` (ignored for a local folder)."""
    task: str
    """caption, vqa, grounding or entailment."""
    num_beams: int | None = None
    """AR teacher: beams (default: the task's OFA setting); NARVL: CTC prefix beam (default: greedy)."""
    answers: str | None = None
    """VQA candidate answers for the AR teacher (required there): OFA's trainval_ans2label.pkl, a JSON list, or one
    per line."""


@dataclass(kw_only=True)
class EvalConfig(ModelFields):
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
    """Write the predictions as JSONL to this file."""


@dataclass(kw_only=True)
class PredictConfig(ModelFields):
    """One prediction for one image."""

    image: str
    """Image file."""
    text: str | None = None
    """Question (vqa), region text (grounding) or hypothesis (entailment)."""
    premise: str | None = None
    """Entailment premise (optional)."""
