"""The model seam: one interface for running any model on any task.

`distill` (teacher targets), `evaluate`, `predict`, `serve`, the latency measurement, the demo and the report all
run a model through this interface, whatever it is: the OFA teacher (`distill.teachers.ofa.OFATeacher`), any
transformers image-text teacher (`distill.teachers.hf.HFTeacher`), the NARVL student in PyTorch or its ONNX export
(`student.runner.NARVLStudent`). `distill.loader.load_model` opens the right one for a folder or a Hub id.

Two halves, because DataLoader workers must not hold the weights:
- `prepare(rows, images, task)` runs in the workers (CPU, picklable state only: the processor and templates) and
  turns canonical rows (docs/ARCHITECTURE.md) and their decoded PIL images into model inputs;
- `infer(inputs, task, settings)` runs in the main process on the loaded model and returns, per sample, its n best
  `Prediction`s in canonical form (text, box in original pixels, label).

A `Task` says what a task is (columns, prompt, answer space, metric); the model decides how to infer it.
"""
from __future__ import annotations

import abc
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from distill.errors import UserError
from distill.images import ImageLoadError, load_image
from distill.prediction import ModelIdentity, Prediction

MODEL_CHOICES = {
    "dtype": ("float32", "bfloat16", "float16"),
    "attn_implementation": ("eager", "sdpa"),
    "cache_implementation": ("dynamic", "static"),
}
"""`ModelOptions` fields with a closed set of values (the first is the default)."""


@dataclass(kw_only=True)
class ModelOptions:
    """How a model is run: the fields `distill` and `evaluate` share (declared once here)."""

    resolution: int | None = None
    """Square image size fed to the model (default: the model's image processor, else the task's)."""
    dtype: str = "float32"
    """Weights' dtype: float32, bfloat16 or float16 (the weights are loaded in it; no autocast then). Half types
    are faster on GPUs and on CPUs with bf16 units, but can change some tokens (benchmarks/teacher_generate.py)."""
    attn_implementation: str = "eager"
    """Attention: eager (matmul + softmax) or sdpa (`scaled_dot_product_attention`, fused on GPU; the same maths)."""
    cache_implementation: str = "dynamic"
    """generate()'s KV cache: dynamic, or static (preallocated; on CUDA generate() then compiles the decoding step
    with torch.compile). The same maths."""
    prompt_template: str | None = None
    """Prompt template of a transformers teacher, overriding its family's default for the task: a Python format
    string whose fields prompt, question, region_text, premise and hypothesis are filled from the row. OFA and NARVL
    read the task's own prompt and refuse it."""

    def check_choices(self) -> None:
        """Refuse a value outside `MODEL_CHOICES` (one line naming the field)."""
        for name, allowed in MODEL_CHOICES.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"`{name}` must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")


@dataclass(kw_only=True)
class DecodingOptions:
    """How a model decodes, where the task's default is not wanted (shared by distill, evaluate and predict)."""

    num_beams: int | None = None
    """Beams: an AR model's beam search (default: the task's OFA evaluation setting, 5); NARVL's CTC prefix beam
    search (default: greedy, the paper's setting)."""
    answers: str | None = None
    """VQA candidate answers, for a model that decodes over an answer list (OFA: required there): OFA's
    `trainval_ans2label.pkl`, a JSON list/dict, or one answer per line."""
    vqa_mode: str = "beam"
    """OFA's VQA inference: `beam` (beam search over the answer trie, its --beam-search-vqa-eval) or `allcand`
    (every candidate scored, its default validation)."""


class Model(abc.ABC):
    """A model behind the seam (see the module docstring).

    A model is pickled into the DataLoader workers (for `prepare`): a model opened from a `folder` pickles without
    its weights (`model`); one wrapping a module in memory (in-training evaluation) runs in-process only."""

    identity: ModelIdentity
    """Family, source (Hub revision or folder hash), tokenizer hash, family settings."""
    resolution: int | None = None
    """Square image side the model is fed (part of a distill run's identity); None: its processor decides."""
    own_prompts: bool = False
    """True when the model is prompted in its own words (a family template), not with the task's OFA prompt:
    `prepare` then returns them as `inputs["prompts"]` and distilled rows store them as `teacher_prompt`."""
    decodes_over_answer_list: bool = False
    """True when the model decodes a task with an answer list (`Task.answer_space == "answer_list"`) over that
    closed list (OFA's trie), which the caller must then give; a model that generates answers freely needs none."""
    autoregressive: bool = True
    """False for NARVL (one decoder pass): it cannot teach (`distill` refuses it)."""
    backend: str = "torch"
    """`torch` or `onnx` (onnxruntime)."""

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if state.get("folder") is not None:  # the workers only prepare: never ship weights that load from a folder
            state["model"] = None
        return state

    @property
    def kind(self) -> str:
        """The model family (`identity.family`): `ofa`, `narvl`, `git`, ..."""
        return self.identity.family

    @property
    @abc.abstractmethod
    def tokenizer(self) -> Any:
        """The model's tokenizer (its vocabulary: `identity.tokenizer_sha256`)."""

    def load(self) -> None:
        """Load the weights onto the device. Opening a model reads only its config, tokenizer and processor (a bad
        input never waits for weights); callers load once, in the main process, before the first `infer`."""

    def check_task(self, task: Any) -> None:
        """Raise a UserError when this model cannot infer `task` (before any data is read or weight loaded)."""

    def settings(self, task: Any, candidates: Sequence[str] | None = None,
                 overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The decoding settings `infer` takes for `task`: the model's defaults for it, then the non-None
        `overrides` (`DECODING_OVERRIDES`); `candidates` is the answer list of a model that decodes over one."""
        settings = dict(task.generation)
        settings.update({k: v for k, v in (overrides or {}).items() if v is not None})
        settings.setdefault("num_return_sequences", 1)
        return settings

    def describe(self, task: Any, settings: Mapping[str, Any]) -> str:
        """How the model decodes the task with `settings`, for reports (e.g. "AR beam 5")."""
        beams = int(settings.get("num_beams", 1) or 1)
        return "AR greedy" if beams == 1 else f"AR beam {beams}"

    @abc.abstractmethod
    def prepare(self, rows: Sequence[Mapping[str, Any]], images: Sequence[Any], task: Any) -> dict[str, Any]:
        """Model inputs (CPU tensors) for `rows` and their decoded PIL `images` (EXIF applied, original size).

        Runs in DataLoader workers: uses only picklable state (processor, templates), never the weights. The
        result carries whatever `infer` needs to map outputs back to original pixels (`orig_sizes`)."""

    @abc.abstractmethod
    def infer(self, inputs: Mapping[str, Any], task: Any, settings: Mapping[str, Any]) -> list[list[Prediction]]:
        """Per sample, its `settings["num_return_sequences"]` best predictions, best first. Runs under
        `torch.inference_mode()` on the model's device."""


@dataclass
class PreparedRows:
    """What `prepare_rows` makes of a batch of canonical rows."""

    good: list[int] = field(default_factory=list)
    """Positions (in the rows given) of the rows the model got."""
    bad: list[tuple[int, str]] = field(default_factory=list)
    """(position, reason) of each row left out: an empty required text, an unreadable image."""
    images: list[Any] = field(default_factory=list)
    """The decoded PIL images of the `good` rows."""
    inputs: dict[str, Any] | None = None
    """`model.prepare` of the good rows; None when none is usable."""


def load_row_image(row: Mapping[str, Any], task: Any) -> tuple[Any, str | None]:
    """(PIL image, None), or (None, why the row cannot be inferred: an empty required text, an unreadable image)."""
    reason = task.bad_row_reason(row)
    if reason is not None:
        return None, reason
    image = row.get("image")
    where = image.get("path") if isinstance(image, Mapping) else None
    try:
        return load_image(image, name=f"row {row.get('id')} ({where or 'embedded'})"), None
    except ImageLoadError as exc:
        return None, str(exc)


def prepare_rows(model: Model, rows: Sequence[Mapping[str, Any]], task: Any) -> PreparedRows:
    """Decode each row's image (one bad image leaves out its row only) and `model.prepare` the usable rows: the
    one way rows become model inputs (distill's DataLoader workers and evaluate / predict / serve)."""
    out = PreparedRows()
    for i, row in enumerate(rows):
        image, reason = load_row_image(row, task)
        if reason is None:
            out.good.append(i)
            out.images.append(image)
        else:
            out.bad.append((i, reason))
    if out.good:
        out.inputs = model.prepare([rows[i] for i in out.good], out.images, task)
    return out


def amp_context(device: torch.device, model_dtype: torch.dtype):
    """Autocast of an fp32 model on CUDA under `accelerate launch --mixed_precision` (the env var it sets); a
    no-op on CPU and for weights already loaded in a half type."""
    mp = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mp) if device.type != "cpu" else None
    amp = None if model_dtype != torch.float32 else amp
    return torch.autocast(device.type, dtype=amp, enabled=amp is not None)
