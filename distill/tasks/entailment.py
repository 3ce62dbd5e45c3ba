"""Visual entailment (SNLI-VE): yes / no / maybe, a `candidates` task (models score the three answers; OFA feeds its
decoder the `prev_output` prompt first)."""
from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
from datasets import Value

from distill.errors import UserError
from distill.prediction import Prediction
from distill.tasks.base import Row, Task, ids_to_text, pre_caption
from distill.tasks.metrics import ACCURACY_IMPLEMENTATION, accuracy

CANDIDATES = ("yes", "no", "maybe")
LABEL_TO_ANSWER = {
    "entailment": "yes", "contradiction": "no", "neutral": "maybe", "yes": "yes", "no": "no", "maybe": "maybe"
}


def label_to_answer(label: str) -> str:
    """SNLI-VE label (entailment/contradiction/neutral, or yes/no/maybe) -> OFA's answer word."""
    answer = LABEL_TO_ANSWER.get(str(label).strip().lower())
    if answer is None:
        raise UserError(f"entailment label must be one of {sorted(LABEL_TO_ANSWER)}, got {label!r}")
    return answer


@dataclass(frozen=True)
class EntailmentTask(Task):
    """Entailment. Target: yes / no / maybe; prediction: the label word of the first decoded token."""

    name: str = "entailment"
    input_columns: tuple[str, ...] = ("id", "image", "premise", "hypothesis", "label")
    resolution: int = 480
    num_queries: int = 3
    label_smoothing: float = 0.0
    generation: Mapping[str, Any] = field(default_factory=lambda: {"num_beams": 1}, hash=False)
    max_prompt_words: int | None = 80
    text_columns: ClassVar[tuple[str, ...]] = ("hypothesis", "premise")
    optional_columns: ClassVar[tuple[str, ...]] = ("premise",)
    reference_columns: ClassVar[tuple[str, ...]] = ("label",)
    tsv_layout: ClassVar[tuple[str, ...] | None] = ("id", "image_id", "image", "hypothesis", "premise", "label")
    answer_space: ClassVar[str] = "candidates"
    candidates: ClassVar[tuple[str, ...]] = CANDIDATES
    prompt_type: ClassVar[str] = "prev_output"
    ctc_merge_repeats: ClassVar[bool] = False
    ctc_beam_search: ClassVar[bool] = False
    baseline_description: ClassVar[str] = "most frequent training label"

    def column_features(self) -> dict[str, Any]:
        return {"hypothesis": Value("string"), "premise": Value("string"), "label": Value("string")}

    def parse_tsv(self, raw: Mapping[str, str]) -> dict[str, Any]:
        return {k: raw.get(k, "") for k in ("hypothesis", "premise", "label")}

    def canonicalise(self, ds, src: str, split: str):
        """A missing premise becomes "" (the no-premise prompt), with a one-time warning when no row has one."""
        if "premise" not in ds.column_names:
            ds = ds.add_column("premise", [""] * len(ds))
        if not any(str(p or "").strip() for p in ds["premise"]):
            warnings.warn(f"{src} ({split}) has no premise: entailment uses the no-premise prompt ' does the image "
                          "describe \" {hypothesis} \"?' (NARVL's and OFA's SNLI-VE scripts pass --add-caption: "
                          "' can image and text1 \" {premise} \" imply text2 \" {hypothesis} \"?')", stacklevel=3)
        return ds

    def to_prediction(self, text: str, ids: list[int], logprob: float, size: tuple[int, int],
                      tokenizer: Any) -> Prediction:
        return Prediction(text=text, ids=ids, logprob=logprob, label=text)

    def prompt(self, row: Row) -> str:
        hypothesis = pre_caption(row["hypothesis"], self.max_prompt_words)
        premise = pre_caption(row.get("premise") or "", self.max_prompt_words)
        if premise:
            return f' can image and text1 " {premise} " imply text2 " {hypothesis} "?'
        return f' does the image describe " {hypothesis} "?'

    def reference(self, row: Row, rng: random.Random | np.random.Generator | None = None, tokenizer: Any = None) -> str:
        return label_to_answer(row["label"])

    def decode(self, text_or_ids: str | Sequence[int], row: Row, tokenizer: Any = None) -> str | None:
        words = ids_to_text(text_or_ids, tokenizer).split()
        return words[0].lower() if words else None

    def scored(self, prediction: Prediction, row: Row) -> str | None:
        """The label a model chose; else the first word of its text (NARVL: its first decoded token)."""
        return prediction.label or self.decode(prediction.text, row)

    def evaluate(self, predictions: Sequence[str | None], rows: Sequence[Row]) -> dict[str, float]:
        return {"accuracy": accuracy(list(predictions), [label_to_answer(r["label"]) for r in rows])}

    def row_scores(self, predictions: Sequence[str | None], rows: Sequence[Row]) -> list[float]:
        """100 for the right label, 0 otherwise."""
        if len(predictions) != len(rows):
            raise ValueError(f"{len(predictions)} predictions for {len(rows)} rows")
        return [100.0 if p == label_to_answer(r["label"]) else 0.0 for p, r in zip(predictions, rows)]

    def metric_implementation(self, rows: Sequence[Row] = ()) -> str:
        return ACCURACY_IMPLEMENTATION
