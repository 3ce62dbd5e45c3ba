"""Visual question answering (VQAv2): prompt `" {question}?"` (+ `" object: ..."` tags when the row has them),
an answer-list task (an OFA model decodes over the user's answer list), the official VQA accuracy (or, for OFA's TSV rows,
OFA's confidence score)."""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import numpy as np
from datasets import List, Value

from distill.errors import UserError
from distill.pickles import load_data_pickle
from distill.tasks.base import Row, Task, ids_to_text, pre_question
from distill.tasks.metrics import (VQA_IMPLEMENTATION, VQA_TSV_IMPLEMENTATION, normalize_vqa_answer, tsv_vqa_score,
                                   vqa_score)

def parse_ofa_answers(text: str) -> list[dict]:
    """OFA's VQA answer field `conf|!+answer&&conf|!+answer` -> `[{"answer", "confidence"}]`, one entry per answer
    (a repeated answer keeps its last confidence, as OFA's dict does). An item without a parsable confidence is
    dropped rather than guessed; a row left with no answer has empty `answers`."""
    scores: dict[str, float] = {}
    for item in filter(None, text.split("&&")):
        conf, sep, answer = item.partition("|!+")
        try:
            value = float(conf)
        except ValueError:
            continue
        if sep and answer:
            scores[answer] = value
    return [{"answer": a, "confidence": c} for a, c in scores.items()]


def answer_confidences(row: Row) -> dict[str, float] | None:
    """OFA's `ref_dict` of a TSV row (`answer_scores`: answer -> confidence), or None for a row of human answers."""
    scores = row.get("answer_scores")
    if not scores:
        return None
    return {s["answer"]: float(s["confidence"]) for s in scores}


def most_common_answer(answers: Sequence[str]) -> str:
    """The most frequent normalised human answer (ties: the one given first), as OFA's highest-confidence target."""
    normalised = [normalize_vqa_answer(a) for a in answers]
    normalised = [a for a in normalised if a]
    if not normalised:
        raise UserError("a VQA row has no non-empty answer")
    counts = Counter(normalised)
    best = max(counts.values())
    return next(a for a in normalised if counts[a] == best)


def candidate_answers(rows: Iterable[Row], max_answers: int | None = None) -> list[str]:
    """An answer list built from rows: each row's target answer, most frequent first. For tests and synthetic data:
    OFA's teacher uses its own 3,129-answer trainval list (`trainval_ans2label.pkl`), given to distill/evaluate."""
    counts = Counter(VQATask().reference(r) for r in rows)
    return [a for a, _ in counts.most_common(max_answers)]


def read_answers(path: str) -> list[str]:
    """Candidate answers in OFA's order: `trainval_ans2label.pkl` (dict answer -> label: ordered by label; read as
    data only, numpy integer labels included), a JSON list or dict (same rule), or one answer per line."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"`answers` {path}: file not found")
    if p.suffix == ".pkl":
        data = load_data_pickle(p, "`answers`")
    elif p.suffix == ".json":
        data = json.loads(p.read_text(encoding="utf-8"))
    else:
        data = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if isinstance(data, dict):
        if not all(isinstance(k, str) and isinstance(v, int) for k, v in data.items()):
            raise UserError(f"`answers` {path}: expected a dict answer -> integer label")
        data = sorted(data, key=data.get)  # OFA's index2ans order (ties keep the file order)
    if not isinstance(data, list) or not all(isinstance(a, str) for a in data):
        raise UserError(f"`answers` {path}: expected a list of answer strings")
    if not data:
        raise UserError(f"`answers` {path} holds no answers")
    return data


@dataclass(frozen=True)
class VQATask(Task):
    """VQA. Target: OFA's highest-confidence answer for TSV rows, else the most common (normalised) human answer."""

    name: str = "vqa"
    input_columns: tuple[str, ...] = ("id", "image", "question", "answers")
    resolution: int = 480
    num_queries: int = 6
    label_smoothing: float = 0.1
    generation: Mapping[str, Any] = field(default_factory=lambda: {"num_beams": 5}, hash=False)
    max_prompt_words: int | None = 128
    max_objects: int = 30
    """Object tags kept in the prompt (OFA's `max_object_length`)."""
    text_columns: ClassVar[tuple[str, ...]] = ("question",)
    optional_columns: ClassVar[tuple[str, ...]] = ("answer_scores", "object_tags")
    reference_columns: ClassVar[tuple[str, ...]] = ("answers", "answer_scores", "object_tags")
    tsv_layout: ClassVar[tuple[str, ...] | None] = ("id", "image_id", "question", "answers", "object_labels", "image")
    answer_space: ClassVar[str] = "answer_list"
    prompt_type: ClassVar[str] = "prev_output"
    hub_category: ClassVar[str] = "visual-question-answering"
    baseline_description: ClassVar[str] = "most frequent training answer"

    def column_features(self) -> dict[str, Any]:
        return {"question": Value("string"), "answers": List(Value("string")),
                "answer_scores": List({"answer": Value("string"), "confidence": Value("float64")}),
                "object_tags": List(Value("string"))}

    def parse_tsv(self, raw: Mapping[str, str]) -> dict[str, Any]:
        """Answers `conf|!+answer&&...` become `answer_scores` and `answers` (each once, in file order); the
        predicted labels (`&&`-joined object tags) become `object_tags`."""
        scores = parse_ofa_answers(raw.get("answers", ""))
        return {"question": raw.get("question", ""), "answer_scores": scores,
                "answers": [s["answer"] for s in scores],
                "object_tags": self.text_value("object_tags", raw.get("object_labels", ""))}

    def text_value(self, column: str, text: str | None) -> Any:
        """Object tags given as one string are OFA's `&&`-joined predicted labels."""
        if column == "object_tags":
            return [o for o in (text or "").strip().split("&&") if o]
        return super().text_value(column, text)

    def answer_list(self, answers: str | None) -> list[str]:
        """OFA decodes over its fixed trainval answer list, not the split's: the `answers` file is required."""
        if answers:
            return read_answers(answers)
        raise UserError("`task` vqa needs `answers` FILE: the candidate answer list the teacher decodes over (OFA's "
                        "dataset/vqa_data/trainval_ans2label.pkl from OFA-Sys's VQA data, or a text/JSON list)")

    def constraint_answers(self, rows: Sequence[Row]) -> list[str]:
        """The training targets' answers (OFA constrains to its trainval answer list, which holds them)."""
        return candidate_answers(rows)

    def prompt(self, row: Row) -> str:
        """`" {question}?"`, then `" object: tag1 tag2 ..."` (the first `max_object_tags`) when the row has object
        tags, as OFA's `vqa_gen_dataset` does with `--add-object` (which both OFA's and NARVL's VQA scripts pass)."""
        question = pre_question(row["question"], self.max_prompt_words)
        if not question.endswith("?"):
            question += "?"
        objects = [o for o in (row.get("object_tags") or []) if o][: self.max_objects]
        tags = f" object: {' '.join(objects)}" if objects else ""  # OFA's --add-object
        return " " + question + tags

    def reference(self, row: Row, rng: random.Random | np.random.Generator | None = None, tokenizer: Any = None) -> str:
        confidences = answer_confidences(row)
        if confidences:
            return max(confidences, key=confidences.get)  # OFA: the first answer of highest confidence
        return most_common_answer(row["answers"])

    def target_weight(self, row: Row, text: str) -> float:
        """OFA/NARVL weight a VQA sample by the confidence of the chosen answer: OFA's for TSV rows, else its VQA
        score against the human answers (fully normalised: the target is the normalised most common answer)."""
        confidences = answer_confidences(row)
        if confidences is not None:
            return tsv_vqa_score(text, confidences)
        return vqa_score(text, list(row["answers"]), normalize="always")

    def decode(self, text_or_ids: str | Sequence[int], row: Row, tokenizer: Any = None) -> str:
        return " ".join(ids_to_text(text_or_ids, tokenizer).split())

    @staticmethod
    def _score(prediction: str, row: Row) -> float:
        confidences = answer_confidences(row)
        if confidences is not None:
            return tsv_vqa_score(prediction, confidences)
        return vqa_score(prediction, list(row["answers"]))

    def evaluate(self, predictions: Sequence[str], rows: Sequence[Row]) -> dict[str, float]:
        """100 x the mean score: OFA's confidence for rows with `answer_scores`, the official VQA accuracy else."""
        if len(predictions) != len(rows):
            raise ValueError(f"{len(predictions)} predictions for {len(rows)} rows")
        if not rows:
            return {"vqa_accuracy": 0.0}
        return {"vqa_accuracy": 100.0 * sum(self._score(p, r) for p, r in zip(predictions, rows)) / len(rows)}

    def row_scores(self, predictions: Sequence[str], rows: Sequence[Row]) -> list[float]:
        """Each question's accuracy (or OFA confidence), x100."""
        if len(predictions) != len(rows):
            raise ValueError(f"{len(predictions)} predictions for {len(rows)} rows")
        return [100.0 * self._score(p, r) for p, r in zip(predictions, rows)]

    def metric_implementation(self, rows: Sequence[Row] = ()) -> str:
        kinds = {answer_confidences(r) is not None for r in rows} or {False}
        return " + ".join(VQA_TSV_IMPLEMENTATION if k else VQA_IMPLEMENTATION for k in sorted(kinds, reverse=True))
