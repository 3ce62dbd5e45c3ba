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
    """{"id", "revision"} for a Hub id, {"id", "sha256"} for a local folder (`distill.run.resolve_teacher`)."""
    tokenizer_sha256: str
    """Hash of the teacher's tokenizer (vocabulary + merges + added tokens): says which vocabulary `target_ids` is in."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Family-specific settings that change outputs (prompt template, ...)."""


class Teacher(abc.ABC):
    """An autoregressive teacher behind one interface; `OFATeacher` and `HFTeacher` implement it."""

    identity: TeacherIdentity

    @abc.abstractmethod
    def prepare(self, rows: Sequence[Mapping[str, Any]], images: Sequence[Any], task: Any) -> dict[str, Any]:
        """Model inputs (CPU tensors) for `rows` and their decoded PIL `images` (EXIF already applied, original size).

        Runs in DataLoader workers: uses only picklable state (processor, templates), never the model. The result
        must carry whatever `infer` needs to map outputs back to original pixels (e.g. `orig_sizes`)."""

    @abc.abstractmethod
    def infer(self, inputs: Mapping[str, Any], task: Any, settings: Mapping[str, Any]) -> list[list[Prediction]]:
        """Per sample, its `settings["num_return_sequences"]` best predictions, best first. Runs under
        `torch.inference_mode()` on the device the teacher was loaded to."""
