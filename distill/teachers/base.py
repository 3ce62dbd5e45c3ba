"""The teacher seam: what `narvl-pipe distill` needs from any autoregressive image-text model.

A teacher turns a batch of canonical rows (docs/ARCHITECTURE.md) into canonical predictions: a caption or answer
text, a box in ORIGINAL image pixels, or an entailment label. The task (`distill.tasks`) then encodes a prediction
into the student's target ids; the teacher's own ids are stored beside it, in the teacher's vocabulary.

Two halves, because the DataLoader workers must not hold the model:
- `prepare(rows, images, task)` runs in the workers (CPU, picklable state only: the processor and templates);
- `infer(inputs, task, settings)` runs in the main process on the loaded model.
"""
from __future__ import annotations

import abc
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence


@dataclass
class Prediction:
    """One of a sample's n best teacher outputs, in canonical form."""

    text: str
    """The decoded text, as the teacher family writes it after its own post-processing (caption, answer, label word;
    for OFA grounding the bin tokens `<bin_a><bin_b>...`)."""
    ids: list[int]
    """The teacher's own token ids after the decoder start token, ending with its EOS (its vocabulary, not the
    student's)."""
    logprob: float
    """Summed log-prob of `ids` under the generation's logits processors (not length-normalised)."""
    box: list[float] | None = None
    """Grounding: x0, y0, x1, y1 in original image pixels; None when the teacher's output held no parseable box."""
    label: str | None = None
    """Entailment: one of the task's candidates (yes / no / maybe)."""


@dataclass
class TeacherIdentity:
    """What the manifest records about the teacher (part of the run identity)."""

    family: str
    """Teacher family: "ofa", "florence2", "paligemma", "blip", "git", "qwen2_vl", ... (the config's model_type)."""
    source: Mapping[str, Any]
    """{"id", "revision"} for a Hub id, {"id", "sha256"} for a local folder (`distill.teacher_source.resolve_teacher`)."""
    tokenizer_sha256: str
    """`tokenizer_sha256` of the teacher's tokenizer: says which vocabulary `target_ids` is in."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Family-specific settings that change outputs (prompt template, ...)."""


    def record(self) -> dict[str, Any]:
        """The manifest's `teacher_identity` entry (JSON)."""
        return {"family": self.family, "source": dict(self.source), "tokenizer_sha256": self.tokenizer_sha256,
                "extra": dict(self.extra)}


class Teacher(abc.ABC):
    """An autoregressive teacher behind one interface; `OFATeacher` and `HFTeacher` implement it.

    A teacher is pickled into the DataLoader workers (for `prepare`): implementations keep the model out of their
    pickled state (`__getstate__`)."""

    identity: TeacherIdentity
    resolution: int | None = None
    """Square image side the teacher is fed (part of the run identity); None: the processor decides."""
    own_prompts: bool = False
    """True when the teacher is prompted in its own words (a family template), not with the task's OFA prompt:
    `prepare` then returns them as `inputs["prompts"]` and the rows store them as `teacher_prompt`."""
    decodes_over_answer_list: bool = False
    """True when the teacher's VQA decoding is constrained to a closed answer list (OFA's trie, `answers`); a
    teacher that generates answers freely needs no list."""

    def load(self) -> None:
        """Load the weights onto the device. Building a teacher reads only its config, tokenizer and processor (a
        run with nothing left to do, or a bad input, never reads weights); `distill` calls this once, in the main
        process, before the first `infer`."""

    def generation_settings(self, task: Any, candidates: Sequence[str] | None) -> dict[str, Any]:
        """The task's default decoding settings for this teacher (`distill` overrides them with the config's
        explicit values); `candidates` is VQA's answer list. By default the task's `generation`."""
        return dict(task.generation)

    @abc.abstractmethod
    def prepare(self, rows: Sequence[Mapping[str, Any]], images: Sequence[Any], task: Any) -> dict[str, Any]:
        """Model inputs (CPU tensors) for `rows` and their decoded PIL `images` (EXIF already applied, original size).

        Runs in DataLoader workers: uses only picklable state (processor, templates), never the model. The result
        must carry whatever `infer` needs to map outputs back to original pixels (e.g. `orig_sizes`)."""

    @abc.abstractmethod
    def infer(self, inputs: Mapping[str, Any], task: Any, settings: Mapping[str, Any]) -> list[list[Prediction]]:
        """Per sample, its `settings["num_return_sequences"]` best predictions, best first. Runs under
        `torch.inference_mode()` on the device the teacher was loaded to."""


def tokenizer_sha256(tokenizer: Any) -> str:
    """Hash of what maps text to ids: the vocabulary with its ids, the BPE merges / model, the added and special
    tokens. Two tokenizers with one hash give the same ids, so a student whose tokenizer has the teacher's hash
    can learn the teacher's `target_ids` as they are (`student.data.TaskRows`).

    Fast tokenizers hash their `tokenizer.json` form without the call-time truncation/padding state; others hash
    the vocabulary in id order."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
    else:
        spec = {"vocab": sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])}
    spec["special_ids"] = [getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "pad", "unk")]
    return hashlib.sha256(json.dumps(spec, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()
