"""Image captioning (COCO): prompt `" what does the image describe?"`; metrics pycocoevalcap's BLEU/METEOR/ROUGE-L/
CIDEr(/SPICE), CIDEr-D alone during training."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from distill.errors import UserError
from distill.tasks.base import Row, Task, clean_caption, ids_to_text, most_frequent, pick
from distill.tasks.caption_metrics import caption_metric_implementation, caption_scores, cider_d, cider_per_image

CAPTION_PROMPT = " what does the image describe?"


@dataclass(frozen=True)
class CaptionTask(Task):
    """Captioning. Target: one reference caption, cleaned as OFA's training data (no punctuation, <= 20 words)."""

    name: str = "caption"
    input_columns: tuple[str, ...] = ("id", "image", "captions")
    resolution: int = 480
    num_queries: int = 20
    label_smoothing: float = 0.1
    generation: Mapping[str, Any] = field(
        # OFA's --max-len-b 16 in fairseq means 16 tokens and then EOS; transformers' max_new_tokens counts the EOS
        # (the config's forced EOS takes the last step), so 16 + 1. fairseq's min_len 1: no empty caption.
        default_factory=lambda: {"num_beams": 5, "max_new_tokens": 17, "min_new_tokens": 1, "no_repeat_ngram_size": 3},
        hash=False,
    )
    max_target_words: int | None = 20
    reference_columns: ClassVar[tuple[str, ...]] = ("captions",)
    tsv_layout: ClassVar[tuple[str, ...] | None] = ("id", "image_id", "caption", "object_labels", "image")
    hub_category: ClassVar[str] = "image-to-text"
    baseline_description: ClassVar[str] = "most frequent training caption"

    def column_features(self) -> dict[str, Any]:
        from datasets import List, Value

        return {"captions": List(Value("string"))}

    def parse_tsv(self, raw: Mapping[str, str]) -> dict[str, Any]:
        """OFA's `caption` field may join several references with `&&`."""
        return {"captions": [c.strip() for c in raw.get("caption", "").split("&&") if c.strip()]}

    def prompt(self, row: Row) -> str:
        return CAPTION_PROMPT

    def reference(self, row: Row, rng: random.Random | np.random.Generator | None = None, tokenizer: Any = None) -> str:
        captions = [c for c in (row.get("captions") or []) if c and c.strip()]
        if not captions:
            raise UserError(f"row {row.get('id')!r} has no reference caption")
        return clean_caption(pick(captions, rng), self.max_target_words)

    def decode(self, text_or_ids: str | Sequence[int], row: Row, tokenizer: Any = None) -> str:
        # OFA strips punctuation from hypotheses before scoring too.
        return clean_caption(ids_to_text(text_or_ids, tokenizer))

    def evaluate(self, predictions: Sequence[str], rows: Sequence[Row]) -> dict[str, float]:
        """pycocoevalcap's metrics, `cider` first (the headline figure)."""
        scores = caption_scores(list(predictions), [list(r["captions"]) for r in rows])
        return {"cider": scores.pop("cider", 0.0), **scores}

    def row_scores(self, predictions: Sequence[str], rows: Sequence[Row]) -> list[float]:
        """pycocoevalcap's CIDEr-D of each image (idf from the whole set), x100."""
        return cider_per_image(list(predictions), [list(r["captions"]) for r in rows])

    def training_metrics(self, predictions: Sequence[str], rows: Sequence[Row]) -> dict[str, float]:
        """CIDEr-D on the Python PTB tokenizer: no JVM inside a training loop."""
        return {"cider": cider_d(list(predictions), [list(r["captions"]) for r in rows])}

    def metric_implementation(self, rows: Sequence[Row] = ()) -> str:
        return caption_metric_implementation()

    def baseline_constant(self, train_rows: Sequence[Row]) -> str:
        """Every cleaned reference counts, as a caption model sees them all in training."""
        return most_frequent([self.reference({"captions": [c]}) for r in train_rows for c in r["captions"]
                              if c and c.strip()])
