"""Visual grounding (RefCOCO): prompt `' which region does the text " {text} " describe?'`, target 4 bin tokens.

A box in original pixels is scaled to the square `resolution` image (OFA resizes RefCOCO images to 512x512), divided
by `max_image_size` (512, i.e. the resolution) and quantised to `num_bins - 1` steps, in the order x0 y0 x1 y1.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
from datasets import List, Value

from distill.errors import UserError
from distill.images import row_image_size
from distill.ofa.fairseq_rules import sequence_generator_settings
from distill.prediction import Prediction
from distill.tasks.base import Row, Task, output_ids, pre_caption
from distill.tasks.metrics import GROUNDING_IMPLEMENTATION, box_hit, grounding_accuracy
from distill.ofa.tokenization_ofa import (
    bins_to_text,
    bins_to_token_ids,
    num_bins as tokenizer_num_bins,
    text_to_bins,
    token_ids_to_bins,
)

OFA_NUM_BINS = 1000


def box_to_bins(
    box: Sequence[float],
    orig_w: float,
    orig_h: float,
    num_bins: int,
    resolution: int,
    max_image_size: int | None = None,
) -> list[int]:
    """[x0, y0, x1, y1] in original pixels -> 4 bin indices (round half to even, as torch.round; clamped)."""
    if len(box) != 4:
        raise UserError(f"a box needs 4 coordinates x0,y0,x1,y1, got {list(box)}")
    max_image_size = max_image_size or resolution
    scale = (resolution / orig_w, resolution / orig_h, resolution / orig_w, resolution / orig_h)
    bins = []
    for coord, s in zip(box, scale):
        k = round(float(coord) * s / max_image_size * (num_bins - 1))
        bins.append(min(max(int(k), 0), num_bins - 1))
    return bins


def bins_to_box(
    bins: Sequence[int],
    orig_w: float,
    orig_h: float,
    num_bins: int,
    resolution: int,
    max_image_size: int | None = None,
) -> list[float]:
    """4 bin indices -> [x0, y0, x1, y1] in original pixels (inverse of `box_to_bins`, undoing the resize ratio)."""
    max_image_size = max_image_size or resolution
    scale = (resolution / orig_w, resolution / orig_h, resolution / orig_w, resolution / orig_h)
    return [int(k) / (num_bins - 1) * max_image_size / s for k, s in zip(bins, scale)]


original_size = row_image_size  # the name the task's callers know


@dataclass(frozen=True)
class GroundingTask(Task):
    """Grounding. Target: 4 bin tokens without spaces; prediction: a box in original pixels, or None."""

    name: str = "grounding"
    input_columns: tuple[str, ...] = ("id", "image", "region_text", "box")
    resolution: int = 512
    num_queries: int = 5
    label_smoothing: float = 0.1
    generation: Mapping[str, Any] = field(
        # OFA's evaluation flags (run_scripts/refcoco/evaluate_refcoco.sh): 4 tokens, then EOS, decoded by fairseq's
        # rules; an OFA model adds the bins' constraint (`OFATeacher.settings`)
        default_factory=lambda: sequence_generator_settings(beam=5, max_len_b=4, min_len=4, no_repeat_ngram_size=3),
        hash=False,
    )
    max_prompt_words: int | None = 80
    max_image_size: int | None = None
    """Divisor of resized coordinates (OFA: 512 for RefCOCO); None means the resolution."""
    text_columns: ClassVar[tuple[str, ...]] = ("region_text",)
    reference_columns: ClassVar[tuple[str, ...]] = ("box",)
    tsv_layout: ClassVar[tuple[str, ...] | None] = ("id", "image_id", "region_text", "box", "image")
    ctc_merge_repeats: ClassVar[bool] = False
    ctc_beam_search: ClassVar[bool] = False
    answer_space: ClassVar[str] = "box"
    hub_category: ClassVar[str] = "object-detection"
    baseline_description: ClassVar[str] = "mean training box"

    def column_features(self) -> dict[str, Any]:
        return {"region_text": Value("string"), "box": List(Value("float64"))}

    def parse_tsv(self, raw: Mapping[str, str]) -> dict[str, Any]:
        """`region-coord` is "x0,y0,x1,y1" in original pixels (unparsable: None, quarantined later)."""
        return {"region_text": raw.get("region_text", ""), "box": self.text_value("box", raw.get("box", ""))}

    def prompt(self, row: Row) -> str:
        return f' which region does the text " {pre_caption(row["region_text"], self.max_prompt_words)} " describe?'

    def _num_bins(self, tokenizer: Any) -> int:
        return tokenizer_num_bins(tokenizer) if tokenizer is not None else OFA_NUM_BINS

    def reference(self, row: Row, rng: random.Random | np.random.Generator | None = None, tokenizer: Any = None) -> str:
        """`"<bin_x0><bin_y0><bin_x1><bin_y1>"`; the bin count comes from `tokenizer` (OFA's 1000 without one)."""
        w, h = original_size(row)
        bins = box_to_bins(row["box"], w, h, self._num_bins(tokenizer), self.resolution, self.max_image_size)
        return bins_to_text(bins)

    def encode_target(self, text: str, tokenizer: Any) -> list[int]:
        """Bin ids straight from the vocabulary (no BPE pass, so no space tokens), then EOS."""
        bins = text_to_bins(text)
        if bins is None or len(bins) != 4:
            raise UserError(f"a grounding target must be 4 bin tokens, got {text!r}")
        return bins_to_token_ids(bins, tokenizer) + [tokenizer.eos_token_id]

    def decode(self, text_or_ids: str | Sequence[int], row: Row, tokenizer: Any = None) -> list[float] | None:
        if isinstance(text_or_ids, str):
            bins = text_to_bins(text_or_ids)
        else:
            if tokenizer is None:
                raise ValueError("decoding token ids needs the tokenizer")
            found = token_ids_to_bins(output_ids(text_or_ids, tokenizer), tokenizer)
            bins = None if any(b is None for b in found) else found
        if bins is None or len(bins) != 4:
            return None  # NARVL: anything but exactly 4 bins is a miss
        w, h = original_size(row)
        return bins_to_box(bins, w, h, self._num_bins(tokenizer), self.resolution, self.max_image_size)

    def scored(self, prediction: Prediction, row: Row) -> list[float] | None:
        """The model's box in original pixels (None: it gave none, a miss)."""
        return prediction.box

    def evaluate(self, predictions: Sequence[list[float] | None], rows: Sequence[Row]) -> dict[str, float]:
        return {"acc@0.5": grounding_accuracy(list(predictions), [list(r["box"]) for r in rows])}

    def row_scores(self, predictions: Sequence[list[float] | None], rows: Sequence[Row]) -> list[float]:
        """100 for a hit (`box_hit`), 0 for a miss or no box."""
        if len(predictions) != len(rows):
            raise ValueError(f"{len(predictions)} predictions for {len(rows)} rows")
        return [100.0 if p is not None and box_hit(p, list(r["box"])) else 0.0 for p, r in zip(predictions, rows)]

    def metric_implementation(self, rows: Sequence[Row] = ()) -> str:
        return GROUNDING_IMPLEMENTATION

    def output_text(self, ids: Sequence[int], tokenizer: Any) -> str:
        """Bins as OFA writes them, "<bin_a><bin_b>...", no spaces."""
        return "".join(tokenizer.convert_ids_to_tokens([t for t in ids if t != tokenizer.eos_token_id]))

    def to_prediction(self, text: str, ids: list[int], logprob: float, size: tuple[int, int],
                      tokenizer: Any) -> Prediction:
        """The teacher's bins decoded into a box in original pixels (None unless exactly 4 bins)."""
        box = self.decode(text, {"width": size[0], "height": size[1]}, tokenizer)
        return Prediction(text=text, ids=ids, logprob=logprob, box=box)

    def prediction_columns(self, prediction: Prediction) -> dict[str, Any]:
        return {"target_box": prediction.box}

    def prediction_features(self) -> dict[str, Any]:
        return {"target_box": List(Value("float64"))}

    def student_target(self, row: Row, tokenizer: Any) -> list[int]:
        """The teacher's box (`target_box`, original pixels) as the student's bins: OFA's box -> bins rule."""
        box = row.get("target_box")
        if box is None:
            if row.get("target") is not None and text_to_bins(row["target"]) is not None:
                return self.encode_target(row["target"], tokenizer)
            raise UserError(f"row {row.get('id')!r}: the teacher gave no box (target_box) to re-encode")
        w, h = original_size(row)
        bins = box_to_bins(box, w, h, self._num_bins(tokenizer), self.resolution, self.max_image_size)
        return bins_to_token_ids(bins, tokenizer) + [tokenizer.eos_token_id]

    def reference_text(self, row: Row) -> str:
        return "[" + ", ".join(f"{v:.0f}" for v in row["box"]) + "]"

    def prediction_text(self, prediction: Any, output: str) -> str:
        """The box the metric scores (in image pixels), not the bin tokens."""
        return (" ".join(f"{v:.1f}" for v in prediction) if prediction
                else "no box (the model did not output exactly 4 bins)")

    def example_text(self, prediction: Any, output: str) -> str:
        """The box the metric scores (in image pixels), not the bin tokens."""
        return "[" + ", ".join(f"{v:.0f}" for v in prediction) + "]" if prediction else f"no box ({output!r})"

    def baseline_constant(self, train_rows: Sequence[Row]) -> list[float]:
        """The mean training box relative to the image size."""
        if not train_rows:
            raise UserError("no rows to learn a constant from")
        boxes = []
        for row in train_rows:
            w, h = original_size(row)
            x0, y0, x1, y1 = (float(v) for v in row["box"])
            boxes.append([x0 / w, y0 / h, x1 / w, y1 / h])
        return [sum(b[i] for b in boxes) / len(boxes) for i in range(4)]

    def baseline_prediction(self, constant: Any, row: Row) -> list[float]:
        w, h = original_size(row)
        return [constant[0] * w, constant[1] * h, constant[2] * w, constant[3] * h]

    def baseline_shown(self, constant: Any) -> str:
        return "[" + ", ".join(f"{v:.2f}" for v in constant) + "] x image size"

    def baseline_needs_images(self) -> bool:
        return True
