"""`NARVLStudent`: the NARVL student behind the model seam (`distill.seam.Model`), run by PyTorch (`NARVLModel`) or
from its ONNX export (`ONNXNARVLModel`, onnxruntime): one encoder pass, one decoder pass over N queries, CTC.

- `prepare` (DataLoader workers): the task's OFA prompt and the image through the student's `OFAProcessor`;
- `infer`: the logits (B, N, V + 1), NARVL's decoding rule of the task (`student.decoding`: greedy CTC, or CTC
  prefix beam search for tasks that merge repeats), then `Task.to_prediction` (grounding: exactly 4 bins -> a box in
  original pixels, else no box).

Importing `student` registers it with `distill.loader` for `model_type` `narvl`, so `load_model` opens a student
folder or its export.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from distill.errors import UserError
from distill.loading import load_pretrained
from distill.ofa.processing_ofa import OFAProcessor, load_ofa_processor
from distill.ofa.tokenization_ofa import bin_token_ids
from distill.prediction import ModelIdentity, Prediction, tokenizer_sha256
from distill.seam import Model, ModelOptions, amp_context

from .configuration_narvl import NARVLConfig
from .decoding import ctc_decode, ctc_greedy_path_log_prob, narvl_rule
from .export import is_exported, read_spec
from .modeling_narvl import NARVLModel
from .onnx_model import ONNXNARVLModel

__all__ = ["NARVLStudent"]


class NARVLStudent(Model):
    """A NARVL student folder, its ONNX export folder, or a module being trained (`from_module`).

    Args:
        processor: the student's `OFAProcessor`; identity: what results record; device: where `load` puts it;
        folder: where `load` reads the model (None: `model` is given); model: a loaded `NARVLModel` or
        `ONNXNARVLModel`; backend: `torch` or `onnx`; num_threads: onnxruntime's intra-op threads (None: its
        default).
    """

    autoregressive = False

    def __init__(self, processor: OFAProcessor, identity: ModelIdentity, device: Any, resolution: int,
                 config: NARVLConfig, folder: Path | None = None, model: Any = None, backend: str = "torch",
                 num_threads: int | None = None):
        self.processor, self.identity, self.device, self.resolution = processor, identity, device, resolution
        self.config = config
        """The student's `NARVLConfig` (task, queries, blank id), read without the weights."""
        self.folder, self.model, self.backend, self.num_threads = folder, model, backend, num_threads

    @classmethod
    def from_pretrained(cls, folder: Path, ident: Mapping[str, Any], options: ModelOptions, device: Any,
                        task: Any = None, num_threads: int | None = None) -> "NARVLStudent":
        """A student folder (`save_pretrained` + its processor) or its ONNX export: processor now, weights (or the
        onnxruntime session) at `load()`."""
        if options.prompt_template:
            raise UserError("`prompt_template` applies to transformers teachers; NARVL reads the task's own prompt")
        if options.dtype != "float32" or options.attn_implementation != "eager":
            raise UserError("`dtype` and `attn_implementation` apply to teachers; a NARVL student runs as it was "
                            "saved (mixed precision on GPU comes from `accelerate launch --mixed_precision`)")
        folder = Path(folder)
        if not (folder / "preprocessor_config.json").is_file():
            raise UserError(f"{folder} has no image processor (preprocessor_config.json)")
        processor = load_ofa_processor(folder)
        identity = ModelIdentity(family="narvl", source=dict(ident),
                                 tokenizer_sha256=tokenizer_sha256(processor.tokenizer))
        backend = "onnx" if is_exported(folder) else "torch"
        if backend == "onnx":
            read_spec(folder)  # an incomplete export fails here, in one line, before any session starts
        resolution = options.resolution or processor.image_processor.size
        return cls(processor, identity, torch.device(device), resolution, NARVLConfig.from_pretrained(str(folder)),
                   folder=folder, backend=backend, num_threads=num_threads)

    @classmethod
    def from_module(cls, model: NARVLModel, processor: OFAProcessor) -> "NARVLStudent":
        """A student in memory (in-training evaluation), run where it is."""
        identity = ModelIdentity(family="narvl", source={"id": "in-training"},
                                 tokenizer_sha256=tokenizer_sha256(processor.tokenizer))
        return cls(processor, identity, model.device, processor.image_processor.size, model.config, model=model)

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def load(self) -> None:
        if self.model is not None:
            return
        if self.backend == "onnx":
            self.model = ONNXNARVLModel(self.folder, self.device, self.num_threads)
        else:
            self.model = load_pretrained(NARVLModel, self.folder).to(self.device).eval()

    def check_task(self, task: Any) -> None:
        """A student answers the task it was trained for (its queries and prompts): another is refused."""
        trained = getattr(self.config, "task", None)
        if trained and trained != task.name:
            raise UserError(f"{self.folder or 'the student'} was trained for task {trained}, not {task.name}")

    def settings(self, task: Any, candidates: Sequence[str] | None = None,
                 overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Greedy CTC (the paper's setting), or CTC prefix beam search with `num_beams` > 1 (tasks whose rule
        merges repeats); one output per sample."""
        overrides = overrides or {}
        beams = int(overrides.get("num_beams") or 1)
        if beams > 1 and not task.ctc_beam_search:
            raise UserError(f"num_beams {beams}: NARVL decodes {task.name} greedily (its rule does not merge repeats, "
                            "so there is no CTC prefix search); leave num_beams unset")
        if overrides.get("vqa_mode") not in (None, "beam"):
            raise UserError("`vqa_mode` applies to OFA teachers; a NARVL student decodes in one pass")
        if int(overrides.get("num_return_sequences") or 1) > 1:
            raise UserError("a NARVL student returns one prediction per sample (`num_return_sequences` 1)")
        return {"num_beams": beams, "num_return_sequences": 1}

    def describe(self, task: Any, settings: Mapping[str, Any]) -> str:
        beams = int(settings.get("num_beams", 1))
        return "one pass + CTC" if beams == 1 else f"one pass + CTC beam {beams}"

    def prepare(self, rows: Sequence[Mapping[str, Any]], images: Sequence[Any], task: Any) -> dict[str, Any]:
        enc = self.processor(text=[task.prompt(r) for r in rows], images=list(images), size=self.resolution)
        return {"input_ids": enc["input_ids"], "patch_images": enc["patch_images"],
                "orig_sizes": [tuple(img.size) for img in images]}

    @torch.inference_mode()
    def logits(self, inputs: Mapping[str, Any]) -> torch.Tensor:
        """The per-query scores (B, N, V + 1) of prepared inputs, on the model's device."""
        self.load()
        device = self.model.device
        dtype = getattr(self.model, "dtype", torch.float32)
        with amp_context(device, dtype):
            return self.model(inputs["input_ids"].to(device),
                              patch_images=inputs["patch_images"].to(device, dtype)).logits

    def infer(self, inputs: Mapping[str, Any], task: Any, settings: Mapping[str, Any]) -> list[list[Prediction]]:
        logits = self.logits(inputs).float()
        cfg, tok = self.config, self.tokenizer
        decoded = ctc_decode(logits, cfg.blank_id, cfg.eos_token_id, cfg.pad_token_id,
                             int(settings.get("num_beams", 1)), narvl_rule(task, bin_token_ids(tok)))
        path_lp = ctc_greedy_path_log_prob(logits)
        out = []
        for ids, lp, size in zip(decoded, path_lp.tolist(), inputs["orig_sizes"]):
            ids = list(ids) + [cfg.eos_token_id]
            out.append([task.to_prediction(task.output_text(ids, tok), ids, float(lp), size, tok)])
        return out
