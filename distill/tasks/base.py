"""The `Task` interface shared by the teacher (distill) and student stages, plus OFA's text normalisation.

A task turns a canonical row (docs/ARCHITECTURE.md) into OFA's prompt, its training target text and ids, and turns a
model output back into a prediction that its metric scores.
"""
from __future__ import annotations

import abc
import random
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
from datasets import List, Value

from distill.errors import UserError
from distill.prediction import Prediction

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


def output_ids(ids: Sequence[int] | Any, tokenizer: Any) -> list[int]:
    """Token ids (list or tensor) of a model output without `<s>`/padding, cut at the first EOS."""
    ids = [int(t) for t in (ids.tolist() if hasattr(ids, "tolist") else ids)]
    ids = [t for t in ids if t != tokenizer.bos_token_id and t != tokenizer.pad_token_id]
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    return ids


def ids_to_text(text_or_ids: str | Sequence[int] | Any, tokenizer: Any | None) -> str:
    """Text as is; token ids (list or tensor) decoded without special tokens, cut at the first EOS."""
    if isinstance(text_or_ids, str):
        return text_or_ids
    if tokenizer is None:
        raise ValueError("decoding token ids needs the tokenizer")
    return tokenizer.decode(output_ids(text_or_ids, tokenizer), skip_special_tokens=True)


def most_frequent(items: Sequence[Any]) -> Any:
    """The most frequent item; ties: the first seen, so the choice is deterministic."""
    if not items:
        raise UserError("no rows to learn a constant from")
    counts = Counter(items)
    best = max(counts.values())
    return next(t for t in items if counts[t] == best)


@dataclass(frozen=True)
class Task(abc.ABC):
    """One task: what its rows hold, its prompt, target, decoding, metric and baseline, shared by every stage.

    This class (and its subclasses in `distill.tasks`) is the only place that knows a task: the rest of the code asks
    it. Build with `distill.tasks.get_task(name, **overrides)`; fields are the OFA / NARVL defaults (settings a
    caller may override), `ClassVar`s are what the task is (not settings). A new task subclasses `Task` and is
    registered with `distill.tasks.register_task`.
    """

    name: str
    """Task name: caption, vqa, grounding, entailment (or a registered one)."""
    input_columns: tuple[str, ...]
    """Canonical columns a row must hold (docs/ARCHITECTURE.md)."""
    resolution: int
    """Square image side fed to the model (OFA: 480, grounding 512)."""
    num_queries: int
    """NARVL decoder queries (caption 20, VQA 6, grounding 5, entailment 3)."""
    label_smoothing: float
    """Label smoothing of the training loss (0.1; entailment 0.0)."""
    generation: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """The paper's decoding settings for the task as JSON values (OFA's evaluation flags: beams, lengths, n-gram
    blocking; caption and grounding as fairseq's `SequenceGenerator` runs them, `distill.ofa.fairseq_rules`); each
    model maps them to its own decoding (`Model.settings`)."""
    max_prompt_words: int | None = None
    """Words kept by OFA's prompt normalisation (OFA's `max_src_length`)."""
    max_target_words: int | None = None
    """Words kept in a text training target (OFA's `max_tgt_length`)."""

    # ------------------------------------------------------------------ what the rows hold
    text_columns: ClassVar[tuple[str, ...]] = ()
    """Text inputs that enter the prompt, the one a request must give first (`question`, `region_text`,
    `hypothesis`); the others are optional (`premise`)."""
    optional_columns: ClassVar[tuple[str, ...]] = ()
    """Canonical columns a row may hold beyond `input_columns` (VQA's `answer_scores`, `object_tags`), or may leave
    empty (entailment's `premise`)."""
    reference_columns: ClassVar[tuple[str, ...]] = ()
    """Source references (and reference-like inputs) copied into the distilled rows when the source has them."""
    tsv_layout: ClassVar[tuple[str, ...] | None] = None
    """OFA-Sys TSV column order of the task (the names are ours; `id` and `image` are read by `distill.sources`);
    None: the task has no TSV format."""

    # ------------------------------------------------------------------ what a model infers
    answer_space: ClassVar[str] = "text"
    """What an answer is: `text` (free text: caption), `answer_list` (a short answer, which some models decode over
    a closed answer list the user gives: VQA), `candidates` (one of `candidates`, which models score: entailment) or
    `box` (a region, 4 location bins in OFA's vocabulary: grounding). Each model maps it to its own decoding."""
    candidates: ClassVar[tuple[str, ...]] = ()
    """The answers of a `candidates` task (entailment: yes / no / maybe)."""
    prompt_type: ClassVar[str] = "none"
    """OFA's `--prompt-type` of the task's fine-tuning and inference: `none`, the decoder starts from `<s>`;
    `prev_output` (VQA, SNLI-VE), it is first fed `<s>` + the prompt tokens (the encoder input without its EOS)
    and is trained on the target after them (OFA's `data/mm_data/{vqa_gen,snli_ve}_dataset.py`)."""
    ctc_merge_repeats: ClassVar[bool] = True
    """NARVL's CTC rule: merge adjacent repeats (caption, VQA) or not (grounding, entailment)."""
    ctc_beam_search: ClassVar[bool] = True
    """NARVL may decode the task with CTC prefix beam search (`num_beams` > 1); else greedily only."""
    hub_category: ClassVar[str] = "image-text-to-text"
    """The Hub task category of a distilled dataset's card (https://huggingface.co/tasks)."""
    recipe_task: ClassVar[str] = "caption"
    """The published training recipe (`student.presets`) a task without its own script follows."""
    epoch_rule: ClassVar[str] = "one sample per row"
    """What an epoch of the official recipe counts (`epoch_samples`), as `train_config.json` reports it."""
    kd_targets_from_text: ClassVar[bool] = False
    """A student learns the teacher's `target` text re-encoded after `kd_text_rule` (`student_target`), never its
    `target_ids` as they are."""
    kd_text_rule: ClassVar[str] = ""
    """How `student_target` cleans the teacher's text first (for `train_config.json`)."""
    baseline_description: ClassVar[str] = "most frequent training target"
    """How the baseline's constant is chosen (the report's decoding column)."""

    def canonical_columns(self) -> tuple[str, ...]:
        """Every canonical column the task reads: `input_columns`, then `optional_columns`."""
        return tuple(dict.fromkeys((*self.input_columns, *self.optional_columns)))

    def prompt_columns(self) -> list[str]:
        """The text inputs in row order (`input_columns` order): the distilled rows carry them as strings."""
        return [c for c in self.input_columns if c in self.text_columns]

    def required_columns(self) -> list[str]:
        """Columns a source must hold: the image and the text inputs that are not optional."""
        return ["image", *[c for c in self.prompt_columns() if c not in self.optional_columns]]

    def bad_row_reason(self, row: Row) -> str | None:
        """Why a row cannot be prompted (an empty required text input), or None."""
        for col in self.prompt_columns():
            if col not in self.optional_columns and not str(row.get(col) or "").strip():
                return f"empty {col}"
        return None

    def column_features(self) -> dict[str, Any]:
        """`datasets` features of the task's canonical columns beyond `id` and `image` (for the sources built here,
        e.g. OFA TSV files): its text inputs as strings; the tasks add their references."""
        return {c: Value("string") for c in self.text_columns}

    def text_value(self, column: str, text: str | None) -> Any:
        """The canonical value of a list column (`column_features`) that a source gives as one string (a CSV, JSON
        or TSV field): a list of strings holds that string (None: no item); a list of numbers is parsed from
        "x0,y0,x1,y1" (commas or spaces; None when unparsable or empty). Any other column keeps `text`. A task
        overrides it where its format joins items otherwise (VQA's `&&`-joined object tags)."""
        feature = self.column_features().get(column)
        if not isinstance(feature, List) or not isinstance(feature.feature, Value):
            return text
        if feature.feature.dtype in ("string", "large_string"):
            return [text] if isinstance(text, str) else []
        try:
            numbers = [float(x) for x in (text or "").replace(" ", ",").split(",") if x]
        except ValueError:
            return None
        return numbers or None

    def parse_tsv(self, raw: Mapping[str, str]) -> dict[str, Any]:
        """Canonical columns from one OFA TSV line (`raw`: `tsv_layout` name -> field; {} for a malformed line)."""
        raise UserError(f"task {self.name} has no OFA TSV format")

    def canonicalise(self, ds, src: str, split: str):
        """Task-specific normalisation of an opened source (entailment: a missing premise becomes "")."""
        return ds

    # ------------------------------------------------------------------ prompt and targets
    @abc.abstractmethod
    def prompt(self, row: Row) -> str:
        """The encoder text, exactly as OFA writes it (leading space included)."""

    @abc.abstractmethod
    def reference(self, row: Row, rng: random.Random | np.random.Generator | None = None, tokenizer: Any = None) -> str:
        """The raw training target text of a row (`tokenizer` only matters for grounding's bin count)."""

    def encode_target(self, text: str, tokenizer: Any) -> list[int]:
        """Target ids ending with EOS, without the leading `<s>`: what distill stores and the student learns."""
        return text_target_ids(text, tokenizer)

    def target_weight(self, row: Row, text: str) -> float:
        """Training-loss weight of a reference target (VQA: the answer's soft score); 1 elsewhere."""
        return 1.0

    def output_text(self, ids: Sequence[int], tokenizer: Any) -> str:
        """The text of output ids in OFA's vocabulary (an OFA teacher's or a NARVL student's; a distilled row's
        `target`): decoded without special tokens."""
        return tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    def to_prediction(self, text: str, ids: list[int], logprob: float, size: tuple[int, int],
                      tokenizer: Any) -> Prediction:
        """An output in OFA's vocabulary (OFA teacher, NARVL student) in canonical form; `size` is the original
        image's (width, height)."""
        return Prediction(text=text, ids=ids, logprob=logprob)

    def prediction_columns(self, prediction: Prediction) -> dict[str, Any]:
        """Extra distilled-row columns holding the canonical prediction beyond `target` (grounding: `target_box`)."""
        return {}

    def prediction_features(self) -> dict[str, Any]:
        """`datasets` features of `prediction_columns`."""
        return {}

    def epoch_samples(self, ds) -> int:
        """The training samples one epoch of the official recipe counts in the `datasets.Dataset` `ds`
        (`epoch_rule`)."""
        return len(ds)

    def student_target(self, row: Row, tokenizer: Any) -> list[int]:
        """A distilled row's target re-encoded in `tokenizer`'s vocabulary from its canonical prediction (the teacher
        spoke another vocabulary). Raises UserError when the row holds no canonical prediction."""
        text = row.get("target")
        if text is None:
            raise UserError(f"task {self.name}: the distilled rows have no `target` column to re-encode")
        return self.encode_target(text, tokenizer)

    # ------------------------------------------------------------------ decoding
    @abc.abstractmethod
    def decode(self, text_or_ids: str | Sequence[int], row: Row, tokenizer: Any = None) -> Any:
        """An output text (or ids in OFA's vocabulary, with or without `<s>`/EOS) -> what the metric scores."""

    def scored(self, prediction: Prediction, row: Row) -> Any:
        """What the metric scores for a model's canonical prediction (caption/answer text, box, label)."""
        return self.decode(prediction.text, row)

    def answer_list(self, answers: str | None) -> list[str] | None:
        """The candidate answer list read from the `answers` file (an `answer_list` task; None without a file)."""
        if answers:
            raise UserError(f"`answers` applies to the tasks that decode over an answer list, not to {self.name}")
        return None

    def constraint_answers(self, rows: Sequence[Row]) -> list[str] | None:
        """The closed answer set of an AR teacher's fine-tuning, from its training rows: what OFA constrains the
        loss to (its `constraint_trie`: VQA's answer list, SNLI-VE's yes/no/maybe) and what in-training evaluation
        decodes over; None: the loss is over the whole vocabulary."""
        return list(self.candidates) or None

    # ------------------------------------------------------------------ metric
    @abc.abstractmethod
    def evaluate(self, predictions: Sequence[Any], rows: Sequence[Row]) -> dict[str, float]:
        """The task metric over predictions aligned with rows."""

    def row_scores(self, predictions: Sequence[Any], rows: Sequence[Row]) -> list[float] | None:
        """Each row's score on the headline metric's scale, whose mean over the rows is `evaluate`'s first value:
        what bootstrap intervals resample and what pairs two systems row by row (`student.intervals`). None: the
        task gives no per-row scores, and its evaluations carry no interval."""
        return None

    def training_metrics(self, predictions: Sequence[Any], rows: Sequence[Row]) -> dict[str, float]:
        """The metric of training-time evaluations (fast, in-process); by default `evaluate`."""
        return self.evaluate(predictions, rows)

    @abc.abstractmethod
    def metric_implementation(self, rows: Sequence[Row] = ()) -> str:
        """Names the implementation `evaluate` uses (shown by evaluate, reports and dataset cards)."""

    # ------------------------------------------------------------------ display and baseline
    def reference_text(self, row: Row) -> str:
        """What a human reads as the row's right answer (caption: the first reference, cleaned)."""
        return self.reference(row)

    def prediction_text(self, prediction: Any, output: str) -> str:
        """A scored prediction as shown to a human ('' when empty); `output` is the raw decoded text."""
        return "" if prediction in (None, "") else str(prediction)

    def example_text(self, prediction: Any, output: str) -> str:
        """A model's output in the report's examples table: the decoded text."""
        return output

    def baseline_constant(self, train_rows: Sequence[Row]) -> Any:
        """The baseline's constant prediction learned from training rows: the most frequent reference."""
        return most_frequent([self.reference(r) for r in train_rows])

    def baseline_prediction(self, constant: Any, row: Row) -> Any:
        """The constant as the metric scores it for `row`."""
        return self.decode(constant, row)

    def baseline_shown(self, constant: Any) -> str:
        """The constant as the report prints it."""
        return str(constant)

    def baseline_needs_images(self) -> bool:
        """The baseline's constant depends on the training images (grounding: their size)."""
        return False
