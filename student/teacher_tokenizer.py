"""The tokenizer of a teacher trained from scratch (`train-teacher --arch` without `--tokenizer`): a byte-level BPE
with OFA's id rules (`distill.ofa.tokenization_ofa.train_tiny_tokenizer`) trained on the text the model will read
and write: each training row's prompt and target text, as its task writes them."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator, Mapping

from distill.errors import UserError
from distill.ofa.tokenization_ofa import text_to_bins, train_tiny_tokenizer

VOCAB_SIZE = 8000
"""Bound of the BPE vocabulary (4 specials + 256 bytes + merges + `<mask>`); a small corpus yields fewer merges."""
NUM_BINS = 1000
"""Location bins, as OFA's (grounding targets are bins, not BPE text)."""
if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

MAX_ROWS = 100_000
"""Rows read per task: enough text for the merges, bounded time on a large source."""


def training_texts(task, ds, max_rows: int = MAX_ROWS) -> Iterator[str]:
    """The prompts and target texts (OFA's `" " + text`) of the first `max_rows` rows of `ds` for `task`; a row
    without a usable text target (grounding's bins, a missing reference) gives its prompt only."""
    rows = ds.select_columns([c for c in ds.column_names if c != "image"])  # the text columns: no image read
    for row in rows.select(range(min(max_rows, len(rows)))):
        yield task.prompt(row)
        try:
            target = task.reference(row)
        except (UserError, KeyError, TypeError, ValueError):
            continue
        if text_to_bins(target) is None:
            yield " " + target.strip()


def tokenizer_from_rows(datasets_by_task: Mapping[str, object], tasks: Iterable) -> PreTrainedTokenizerFast:
    """A BPE trained on every task's training text (`training_texts`), no image codes, `NUM_BINS` bins."""
    texts = [t for task in tasks for t in training_texts(task, datasets_by_task[task.name])]
    return train_tiny_tokenizer(texts, vocab_size=VOCAB_SIZE, num_codes=0, num_bins=NUM_BINS)
