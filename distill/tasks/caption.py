"""Image captioning (COCO): prompt `" what does the image describe?"`; metrics pycocoevalcap's BLEU/METEOR/ROUGE-L/
CIDEr(/SPICE), CIDEr-D alone during training."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
from datasets import List, Value

from distill.errors import UserError
from distill.ofa.fairseq_rules import sequence_generator_settings
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
        # OFA's evaluation flags (run_scripts/caption/evaluate_caption.sh), decoded by fairseq's rules
        default_factory=lambda: sequence_generator_settings(beam=5, max_len_b=16, min_len=1, no_repeat_ngram_size=3),
        hash=False,
    )
    max_target_words: int | None = 20
    reference_columns: ClassVar[tuple[str, ...]] = ("captions",)
    tsv_layout: ClassVar[tuple[str, ...] | None] = ("id", "image_id", "caption", "object_labels", "image")
    hub_category: ClassVar[str] = "image-to-text"
    baseline_description: ClassVar[str] = "most frequent training caption"
    epoch_rule: ClassVar[str] = ("one sample per reference caption (OFA's caption_stage1_train.tsv lists each "
                                 "caption on its own line)")
    kd_targets_from_text: ClassVar[bool] = True
    kd_text_rule: ClassVar[str] = "NARVL's caption cleaning (lower case, no punctuation, at most 20 words)"

    def column_features(self) -> dict[str, Any]:
        return {"captions": List(Value("string"))}

    def parse_tsv(self, raw: Mapping[str, str]) -> dict[str, Any]:
        """OFA's `caption` field may join several references with `&&`."""
        return {"captions": [c.strip() for c in raw.get("caption", "").split("&&") if c.strip()]}

    def prompt(self, row: Row) -> str:
        return CAPTION_PROMPT

    def epoch_samples(self, ds) -> int:
        """One sample per reference caption: OFA's stage-1 caption TSV (which NARVL's KD file is made from) holds one
        caption per line, an image on about five lines, where Karpathy's JSON (and a set distilled from it) holds
        one row per image with all its captions. A row without captions counts once."""
        if "captions" not in ds.column_names:
            return len(ds)
        batches = ds.select_columns(["captions"]).iter(batch_size=65536)
        return sum(max(1, len(c or ())) for batch in batches for c in batch["captions"])

    def student_target(self, row: Row, tokenizer: Any) -> list[int]:
        """The teacher's caption cleaned as NARVL's `CaptionDataset` cleans training captions (punctuation removed,
        at most `max_target_words` words; lower case too), then encoded: a teacher of another family (capitals,
        full stops, long captions) gives the student the targets an OFA teacher's would."""
        text = row.get("target")
        if text is None:
            raise UserError(f"task {self.name}: the distilled rows have no `target` column to re-encode")
        return self.encode_target(clean_caption(text, self.max_target_words), tokenizer)

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
