"""Visual question answering (VQAv2): prompt `" {question}?"`, decoding constrained to an answer list, VQA accuracy."""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from distill.errors import UserError
from distill.tasks.base import Row, Task, ids_to_text, pre_question, text_target_ids, trie_prefix_fn
from distill.tasks.metrics import normalize_vqa_answer, vqa_accuracy


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
    """The answer list for constrained decoding: each row's target answer, most frequent first (OFA uses the 3,129
    most frequent VQAv2 train answers)."""
    counts = Counter(most_common_answer(r["answers"]) for r in rows)
    return [a for a, _ in counts.most_common(max_answers)]


def allowed_tokens_fn(answers: Sequence[str], tokenizer: Any) -> Callable[[int, Any], list[int]]:
    """`prefix_allowed_tokens_fn` restricting generation to `answers` (a trie over their target ids, EOS-ended)."""
    if not answers:
        raise UserError("VQA constrained decoding needs a non-empty answer list")
    return trie_prefix_fn([text_target_ids(a, tokenizer) for a in answers], tokenizer.eos_token_id)


@dataclass(frozen=True)
class VQATask(Task):
    """VQA. Target: the most common (normalised) human answer."""

    name: str = "vqa"
    input_columns: tuple[str, ...] = ("id", "image", "question", "answers")
    resolution: int = 480
    num_queries: int = 6
    label_smoothing: float = 0.1
    generation: Mapping[str, Any] = field(default_factory=lambda: {"num_beams": 5}, hash=False)
    max_prompt_words: int | None = 128

    def prompt(self, row: Row) -> str:
        question = pre_question(row["question"], self.max_prompt_words)
        if not question.endswith("?"):
            question += "?"
        return " " + question

    def reference(self, row: Row, rng: random.Random | np.random.Generator | None = None, tokenizer: Any = None) -> str:
        return most_common_answer(row["answers"])

    def decode(self, text_or_ids: str | Sequence[int], row: Row, tokenizer: Any = None) -> str:
        return " ".join(ids_to_text(text_or_ids, tokenizer).split())

    def evaluate(self, predictions: Sequence[str], rows: Sequence[Row]) -> dict[str, float]:
        return {"vqa_accuracy": vqa_accuracy(list(predictions), [list(r["answers"]) for r in rows])}

    def generate_kwargs(self, tokenizer: Any, candidates: Sequence[str] | None = None) -> dict[str, Any]:
        """Beam search over the answer trie; `candidates` (the answer list) is required."""
        if not candidates:
            raise UserError("VQA generation needs the candidate answer list (see distill.tasks.vqa.candidate_answers)")
        longest = max(len(text_target_ids(a, tokenizer)) for a in candidates)
        constraint = allowed_tokens_fn(candidates, tokenizer)
        return {**self.generation, "max_new_tokens": longest, "prefix_allowed_tokens_fn": constraint}
