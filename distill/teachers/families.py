"""Teacher families: per-task prompt templates and the location format of each transformers image-text family.

A family is chosen by the teacher's `config.json` `model_type`. What it fixes:
- `templates`: the prompt per task, a Python format string over the row (placeholders below);
- `chat`: the prompt goes through `processor.apply_chat_template` (an image then the text, one user turn, the
  generation prompt appended) instead of being given to the processor as is;
- `boxes`: how a grounding output's location format becomes boxes in original pixels (`distill.teachers.locations`);
- `grounding_max_new_tokens`: the least room a grounding answer needs (Florence-2 writes the phrase before its
  `<loc_k>` tokens; OFA's four-token budget is too short for every family).

Placeholders (`ModelOptions.prompt_template` may use the same ones; an unknown one is refused before any model
loads): the task's text columns (`Task.text_columns`: `{question}` for vqa, `{region_text}` for grounding,
`{premise}` and `{hypothesis}` for entailment, a registered task's own) and `{prompt}` (the task's own OFA prompt,
e.g. `" what does the image describe?"`). Empty columns are empty strings; a template `<task>_no_<column>` is used
for rows whose optional text column is empty (entailment without a premise).

Model-card facts the defaults follow: Florence-2's task tokens `<CAPTION>` and `<CAPTION_TO_PHRASE_GROUNDING>`
(expanded by `Florence2Processor`; other text passes through as is, which is how its VQA fine-tunes are prompted);
PaliGemma's `caption en`, `answer en {question}`, `detect {objects}`; Qwen2-VL's `<|object_ref_start|>` reference
for grounding, Qwen2.5-VL's "output its bbox coordinates in JSON format"; the chat families' VQAv2 evaluation
suffix "Answer the question using a single word or phrase.".
"""
from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from distill.errors import UserError
from distill.teachers import locations



def placeholders(task: Any) -> tuple[str, ...]:
    """Names a prompt template for `task` may use: `prompt` and the task's text columns."""
    return ("prompt", *task.text_columns)

BoxParser = Callable[[str, float, float, "tuple[float, float] | None"], list[list[float]]]


def check_template(template: str, names: Sequence[str], field_name: str = "prompt_template") -> None:
    """Raise a UserError naming `field_name` when `template` uses a placeholder outside `names`."""
    try:
        used = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise UserError(f"`{field_name}` {template!r} is not a valid template ({exc}); write literal braces as "
                        "{{ }}") from exc
    unknown = sorted(n for n in used if n not in names)
    if unknown or "" in used:
        bad = unknown or ["{}"]
        raise UserError(f"`{field_name}` {template!r} uses {bad}; placeholders: "
                        + ", ".join("{" + p + "}" for p in names))


def _qwen2_vl(text: str, w: float, h: float, resized=None) -> list[list[float]]:
    return locations.parse_qwen2_vl(text, w, h)


def _qwen2_5_vl(text: str, w: float, h: float, resized=None) -> list[list[float]]:
    return locations.parse_qwen2_5_vl(text, w, h, resized or (w, h))


@dataclass(frozen=True)
class Family:
    """What differs between teacher families (see the module docstring)."""

    name: str
    """The family's `model_type` (recorded as the teacher family)."""
    templates: Mapping[str, str]
    """Task name -> prompt template; `<task>_no_premise` is used for rows whose `premise` is empty."""
    chat: bool = False
    """Wrap the prompt with `processor.apply_chat_template`."""
    boxes: BoxParser | None = None
    """Grounding output text, original width, height, resized (width, height) -> boxes (x0, y0, x1, y1, original
    pixels), best first; None: no box format. Module-level callables only: the family travels to the workers."""
    grounding_max_new_tokens: int = 32
    """Generation budget floor for grounding."""
    image_prefix: bool = False
    """Start the text with the processor's image token (PaliGemma: one `<image>` per image, before the prompt)."""
    bos_prefix: bool = False
    """Tokenise without the tokenizer's own specials and start with its BOS (or CLS): GIT continues `[CLS] prompt`,
    and a trailing `[SEP]` would read as an answer already ended."""
    unpadded: bool = False
    """The model's plain forward numbers positions from its first column, padding included (GIT's absolute
    position embeddings; `generate()` passes mask-derived positions, so generation is not affected): candidate
    scoring runs one unpadded group per prompt length."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Family notes recorded in the teacher identity."""

    def template(self, task: Any, row: Mapping[str, Any], override: str | None) -> str:
        """The template for this row: `override`, else the family's for the task (its `<task>_no_<column>`
        variant when that optional text column is empty), else the task's own prompt."""
        if override:
            return override
        for col in task.text_columns:
            variant = f"{task.name}_no_{col}"
            if col in task.optional_columns and variant in self.templates and not str(row.get(col) or "").strip():
                return self.templates[variant]
        return self.templates.get(task.name, "{prompt}")

    def prompt(self, task: Any, row: Mapping[str, Any], override: str | None) -> str:
        """The filled template (placeholders from the row's text columns, missing ones empty; `{prompt}`: the
        task's own prompt)."""
        values = {name: str(row.get(name) or "").strip() for name in task.text_columns}
        values["prompt"] = task.prompt(row).strip()
        return self.template(task, row, override).format_map(values)


_CHAT_TEMPLATES = {
    "caption": "Describe the image in one short sentence.",
    "vqa": "{question} Answer the question using a single word or phrase.",
    "entailment": 'Premise: "{premise}". Hypothesis: "{hypothesis}". Does the image together with the premise imply '
                  "the hypothesis? Answer yes, no or maybe.",
    "entailment_no_premise": 'Does the image show that "{hypothesis}"? Answer yes, no or maybe.',
}

FAMILIES: dict[str, Family] = {
    "florence2": Family(
        "florence2",
        {"caption": "<CAPTION>", "vqa": "{question}", "grounding": "<CAPTION_TO_PHRASE_GROUNDING>{region_text}",
         "entailment": 'Does the image with the text "{premise}" imply "{hypothesis}"? yes, no or maybe?',
         "entailment_no_premise": 'Does the image show "{hypothesis}"? yes, no or maybe?'},
        boxes=locations.FLORENCE2, grounding_max_new_tokens=32),
    "paligemma": Family(
        "paligemma",
        {"caption": "caption en", "vqa": "answer en {question}", "grounding": "detect {region_text}",
         "entailment": 'answer en given "{premise}", is it true that "{hypothesis}"? yes, no or maybe',
         "entailment_no_premise": 'answer en is it true that "{hypothesis}"? yes, no or maybe'},
        boxes=locations.PALIGEMMA, grounding_max_new_tokens=16, image_prefix=True),
    "qwen2_vl": Family(
        "qwen2_vl",
        {**_CHAT_TEMPLATES,
         "grounding": "Output the bounding box of <|object_ref_start|>{region_text}<|object_ref_end|> in the image."},
        chat=True, boxes=_qwen2_vl, grounding_max_new_tokens=48),
    "qwen2_5_vl": Family(
        "qwen2_5_vl",
        {**_CHAT_TEMPLATES,
         "grounding": "Locate {region_text} in the image and output its bbox coordinates in JSON format."},
        chat=True, boxes=_qwen2_5_vl, grounding_max_new_tokens=64),
}
FAMILIES["git"] = Family(
    "git", {"caption": "", "vqa": "{question}",
            "entailment": 'given "{premise}", does the image show "{hypothesis}"? yes, no or maybe',
            "entailment_no_premise": 'does the image show "{hypothesis}"? yes, no or maybe'},
    bos_prefix=True, unpadded=True)
"""Families with known templates; any other model with a chat template is a chat family without a box format,
any other without one a plain-prompt family (`family_for`)."""


def family_for(model_type: str, has_chat_template: bool) -> Family:
    """The family of a `model_type`: a known one, else a generic chat (SmolVLM, LLaVA, Idefics3, ...) or plain-prompt
    family (captioners prompted with the task's text) without a box format."""
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    if has_chat_template:
        return Family(model_type, dict(_CHAT_TEMPLATES), chat=True)
    return Family(model_type, {"caption": "", "vqa": "{question}",
                               "entailment": 'does the image show "{hypothesis}"? yes, no or maybe',
                               "entailment_no_premise": 'does the image show "{hypothesis}"? yes, no or maybe'})


def chat_text(processor: Any, prompt: str) -> str:
    """One user turn (the image, then `prompt`) with the generation prompt, as the processor's chat template writes
    it."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def box_families() -> Sequence[str]:
    """Families that can ground (have a box format)."""
    return sorted(name for name, fam in FAMILIES.items() if fam.boxes is not None)
