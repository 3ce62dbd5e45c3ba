"""Visual entailment (SNLI-VE): yes / no / maybe, scored as OFA does by comparing the candidates' log-probs."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from distill.errors import UserError
from distill.tasks.base import Row, Task, ids_to_text, pre_caption, text_target_ids, trie_prefix_fn
from distill.tasks.metrics import accuracy

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


def candidate_decoder_inputs(targets: Sequence[Sequence[int]], bos_id: int, pad_id: int) -> torch.Tensor:
    """(C, T) teacher-forcing decoder inputs `<s> + target[:-1]`, right-padded with `pad_id`."""
    length = max(len(t) for t in targets)
    out = torch.full((len(targets), length), pad_id, dtype=torch.long)
    for c, t in enumerate(targets):
        seq = [bos_id] + list(t[:-1])
        out[c, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return out


def candidate_log_probs(logits: torch.Tensor, targets: Sequence[Sequence[int]]) -> torch.Tensor:
    """Sum of teacher-forced log-probs of each candidate target.

    Args:
        logits: (..., C, T, V) decoder logits for the C candidates fed as `candidate_decoder_inputs` (T >= longest).
        targets: C target id lists (ending with EOS).
    Returns:
        (..., C) log p(target_c | image, prompt).
    """
    c, t = logits.shape[-3], logits.shape[-2]
    if c != len(targets):
        raise ValueError(f"logits hold {c} candidates, got {len(targets)} targets")
    tgt = torch.zeros((c, t), dtype=torch.long, device=logits.device)
    mask = torch.zeros((c, t), dtype=torch.bool, device=logits.device)
    for i, seq in enumerate(targets):
        tgt[i, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[i, : len(seq)] = True
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, tgt.expand(*logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(~mask, 0.0).sum(-1)


def best_candidate(logits: torch.Tensor, targets: Sequence[Sequence[int]]) -> torch.Tensor:
    """(...,) index of the candidate with the highest teacher-forced log-prob."""
    return candidate_log_probs(logits, targets).argmax(-1)


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
    candidates: tuple[str, ...] = CANDIDATES
    """Answers OFA's evaluation scores (`candidate_log_probs`); generation is restricted to them as well."""

    def prompt(self, row: Row) -> str:
        hypothesis = pre_caption(row["hypothesis"], self.max_prompt_words)
        premise = pre_caption(row.get("premise") or "", self.max_prompt_words)
        if premise:
            return f' can image and text1 " {premise} " imply text2 " {hypothesis} "?'
        return f' does the image describe " {hypothesis} "?'

    def reference(self, row: Row, rng: random.Random | np.random.Generator | None = None, tokenizer: Any = None) -> str:
        return label_to_answer(row["label"])

    def candidate_targets(self, tokenizer: Any) -> list[list[int]]:
        """Target ids of each candidate, in `candidates` order."""
        return [text_target_ids(c, tokenizer) for c in self.candidates]

    def decode(self, text_or_ids: str | Sequence[int], row: Row, tokenizer: Any = None) -> str | None:
        words = ids_to_text(text_or_ids, tokenizer).split()
        return words[0].lower() if words else None

    def evaluate(self, predictions: Sequence[str | None], rows: Sequence[Row]) -> dict[str, float]:
        return {"accuracy": accuracy(list(predictions), [label_to_answer(r["label"]) for r in rows])}

    def generate_kwargs(self, tokenizer: Any, candidates: Sequence[str] | None = None) -> dict[str, Any]:
        """Greedy decoding restricted to the candidates (the scoring path is `candidate_log_probs`)."""
        targets = [text_target_ids(c, tokenizer) for c in (candidates or self.candidates)]
        return {
            **self.generation,
            "max_new_tokens": max(len(t) for t in targets),
            "prefix_allowed_tokens_fn": trie_prefix_fn(targets, tokenizer.eos_token_id),
        }
