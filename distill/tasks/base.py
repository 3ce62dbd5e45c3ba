"""The `Task` interface shared by the teacher (distill) and student stages, plus OFA's text normalisation.

A task turns a canonical row (docs/ARCHITECTURE.md) into OFA's prompt, its training target text and ids, and turns a
model output back into a prediction that its metric scores.
"""
from __future__ import annotations

import abc
import random
import re
import string
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from distill.errors import UserError

Row = Mapping[str, Any]
_PUNCT_TABLE = str.maketrans({c: None for c in string.punctuation})
_MULTI_SPACE = re.compile(r"\s{2,}")


def _ofa_normalise(text: str, max_words: int | None, person: bool) -> str:
    text = text.lower().lstrip(",.!?*#:;~").replace("-", " ").replace("/", " ")
    if person:
        text = text.replace("<person>", "person")
    text = _MULTI_SPACE.sub(" ", text).rstrip("\n").strip(" ")
    words = text.split(" ")
    if max_words is not None and len(words) > max_words:
        text = " ".join(words[:max_words])
    return text


def pre_caption(text: str, max_words: int | None = None) -> str:
    """OFA's `pre_caption` for prompt text: lowercase, drop leading `,.!?*#:;~`, `-` and `/` to spaces,
    `<person>` to `person`, collapse runs of 2+ whitespace, strip, keep the first `max_words` words."""
    return _ofa_normalise(text, max_words, person=True)


def pre_question(text: str, max_words: int | None = None) -> str:
    """OFA's `pre_question`: as `pre_caption` without the `<person>` rule (the `?` is added by the VQA task)."""
    return _ofa_normalise(text, max_words, person=False)


def clean_caption(text: str, max_words: int | None = None) -> str:
    """OFA's caption target/hypothesis cleaning: remove ASCII punctuation, collapse whitespace, keep `max_words` words.

    We also lowercase: OFA's COCO files hold lowercase captions already, and raw COCO captions start with capitals.
    """
    words = text.translate(_PUNCT_TABLE).lower().split()
    if max_words is not None:
        words = words[:max_words]
    return " ".join(words)


def pick(items: Sequence[Any], rng: random.Random | np.random.Generator | None) -> Any:
    """One item: the first without `rng`, else a uniform draw from a `random.Random` or numpy `Generator`."""
    if rng is None:
        return items[0]
    if isinstance(rng, np.random.Generator):
        return items[int(rng.integers(len(items)))]
    return items[rng.randrange(len(items))]


def text_target_ids(text: str, tokenizer: Any) -> list[int]:
    """OFA's target for text answers: BPE of `" " + text` (leading space, as OFA writes `" {}"`), then EOS; no BOS."""
    ids = tokenizer(" " + text.strip(), add_special_tokens=False)["input_ids"]
    return list(ids) + [tokenizer.eos_token_id]


def ids_to_text(text_or_ids: str | Sequence[int] | Any, tokenizer: Any | None) -> str:
    """Text as is; token ids (list or tensor) decoded without special tokens, cut at the first EOS."""
    if isinstance(text_or_ids, str):
        return text_or_ids
    if tokenizer is None:
        raise ValueError("decoding token ids needs the tokenizer")
    ids = [int(t) for t in (text_or_ids.tolist() if hasattr(text_or_ids, "tolist") else text_or_ids)]
    ids = [t for t in ids if t != tokenizer.bos_token_id and t != tokenizer.pad_token_id]
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    return tokenizer.decode(ids, skip_special_tokens=True)


class TokenTrie:
    """Allowed next tokens for decoding constrained to a fixed set of token sequences (each ending with EOS)."""

    def __init__(self, sequences: Sequence[Sequence[int]]):
        self.root: dict[int, dict] = {}
        for seq in sequences:
            node = self.root
            for tok in seq:
                node = node.setdefault(int(tok), {})

    def next_tokens(self, prefix: Sequence[int]) -> list[int]:
        """Tokens that extend `prefix` toward some sequence; [] when `prefix` left the trie or is complete."""
        node = self.root
        for tok in prefix:
            node = node.get(int(tok))
            if node is None:
                return []
        return list(node)


def trie_prefix_fn(sequences: Sequence[Sequence[int]], eos_id: int) -> Callable[[int, Any], list[int]]:
    """`prefix_allowed_tokens_fn` for `generate()`: the decoder input starts with its start token (`<s>`), which is
    skipped; a finished or off-trie beam may only emit EOS (generate() then pads it)."""
    trie = TokenTrie(sequences)

    def allowed(batch_id: int, input_ids: Any) -> list[int]:
        return trie.next_tokens(input_ids.tolist()[1:]) or [eos_id]

    return allowed


@dataclass(frozen=True)
class Task(abc.ABC):
    """One OFA task: prompt, target, decoding and metric, shared by the distill and student stages.

    Build with `distill.tasks.get_task(name, **overrides)`; fields are the OFA / NARVL defaults.
    """

    name: str
    """Task name: caption, vqa, grounding or entailment."""
    input_columns: tuple[str, ...]
    """Canonical columns a row must hold (docs/ARCHITECTURE.md)."""
    resolution: int
    """Square image side fed to the model (OFA: 480, grounding 512)."""
    num_queries: int
    """NARVL decoder queries (caption 20, VQA 6, grounding 5, entailment 3)."""
    label_smoothing: float
    """Label smoothing of the training loss (0.1; entailment 0.0)."""
    generation: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """OFA's evaluation settings as static `generate()` kwargs; `generate_kwargs()` adds the constraints."""
    max_prompt_words: int | None = None
    """Words kept by OFA's prompt normalisation (OFA's `max_src_length`)."""
    max_target_words: int | None = None
    """Words kept in a text training target (OFA's `max_tgt_length`)."""

    def check_columns(self, columns: Sequence[str]) -> None:
        """Raise a UserError naming the canonical columns this task needs and `columns` lacks."""
        missing = [c for c in self.input_columns if c not in columns]
        if missing:
            raise UserError(
                f"task {self.name} needs columns {list(self.input_columns)}; missing {missing} (have {list(columns)})"
            )

    @abc.abstractmethod
    def prompt(self, row: Row) -> str:
        """The encoder text, exactly as OFA writes it (leading space included)."""

    @abc.abstractmethod
    def reference(self, row: Row, rng: random.Random | np.random.Generator | None = None, tokenizer: Any = None) -> str:
        """The raw training target text of a row (`tokenizer` only matters for grounding's bin count)."""

    def encode_target(self, text: str, tokenizer: Any) -> list[int]:
        """Target ids ending with EOS, without the leading `<s>`: what distill stores and the student learns."""
        return text_target_ids(text, tokenizer)

    @abc.abstractmethod
    def decode(self, text_or_ids: str | Sequence[int], row: Row, tokenizer: Any = None) -> Any:
        """A model output (text, or ids with or without `<s>`/EOS) -> the prediction the metric scores."""

    @abc.abstractmethod
    def evaluate(self, predictions: Sequence[Any], rows: Sequence[Row]) -> dict[str, float]:
        """The task metric over predictions aligned with rows."""

    def generate_kwargs(self, tokenizer: Any, candidates: Sequence[str] | None = None) -> dict[str, Any]:
        """Full `generate()` kwargs: `generation` plus any decoding constraint (bins, answer trie)."""
        return dict(self.generation)

    def ofa_inference(self, model: Any, tokenizer: Any, inputs: Mapping[str, Any], settings: Mapping[str, Any],
                      num_return_sequences: int = 1) -> list[list[tuple[list[int], str, float]]] | None:
        """The AR teacher's inference when it is not a plain `generate()` (VQA, entailment: OFA's own recipe, see
        `distill.tasks.ofa_decoding`): per sample the n best (ids ending with EOS, text, log-prob). None: use
        `generate(**inputs, **settings)`. Shared by `distill` and `evaluate`."""
        return None

    def target_weight(self, row: Row, text: str) -> float:
        """Training-loss weight of a reference target (VQA: the answer's soft score); 1 elsewhere."""
        return 1.0

    def training_metrics(self, predictions: Sequence[Any], rows: Sequence[Row]) -> dict[str, float]:
        """The metric of training-time evaluations (fast, in-process); by default `evaluate`."""
        return self.evaluate(predictions, rows)

    @abc.abstractmethod
    def metric_implementation(self, rows: Sequence[Row] = ()) -> str:
        """Names the implementation `evaluate` uses (shown by evaluate, reports and dataset cards)."""
