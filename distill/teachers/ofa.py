"""`OFATeacher`: OFA (`distill.ofa.OFAModel`) behind the teacher seam, exactly as `narvl-pipe distill` has always run it.

- `prepare` (DataLoader workers): OFA's prompt (`Task.prompt`) tokenised as `<s> prompt </s>` right-padded, each image
  resized to the square resolution and normalised (`OFAImageProcessor`);
- `infer` (main process): the task's own OFA inference when it has one (`Task.ofa_inference`: VQA's answer-trie beam
  search or candidate scoring, entailment's candidate scoring, `distill.tasks.ofa_decoding`), else `generate()` with
  the task's settings and `compute_transition_scores` for each beam's log-prob. Outputs become `Prediction`s through
  `Task.to_prediction` (grounding: the bins decoded into a box in original pixels).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from distill.loading import load_pretrained
from distill.ofa import OFAModel, fairseq_rules
from distill.ofa.processing_ofa import load_ofa_processor
from distill.ofa.tokenization_ofa import load_ofa_tokenizer
from distill.teachers.base import Prediction, Teacher, TeacherIdentity, tokenizer_sha256

NBest = list[tuple[list[int], str, float]]


def folder_resolution(folder: Path) -> int | None:
    """The square side recorded in a model folder's `preprocessor_config.json`, or None."""
    f = Path(folder) / "preprocessor_config.json"
    if f.is_file():
        size = json.loads(f.read_text()).get("size")
        return int(size["height"]) if isinstance(size, dict) else (int(size) if size else None)
    return None


def split_targets(sequences: torch.Tensor, scores: torch.Tensor, eos: int, pad: int, tokenizer, task) -> NBest:
    """Per generated sequence: (ids after the start token, cut after the first EOS, EOS appended if missing; text;
    summed log-prob of those ids)."""
    result = []
    for seq, sc in zip(sequences.tolist(), scores.tolist()):
        ids, total = [], 0.0
        for t, tok in enumerate(seq[1:]):
            if tok == pad:
                break
            ids.append(tok)
            total += sc[t]
            if tok == eos:
                break
        if not ids or ids[-1] != eos:
            ids.append(eos)
        result.append((ids, task.teacher_text(ids, tokenizer), total))
    return result


class OFATeacher(Teacher):
    """An OFA folder (`save_pretrained` layout: weights, tokenizer, image processor) as a teacher.

    Args:
        folder: the model folder; identity: what the manifest records; config: the `DistillConfig` (dtype,
        attention and cache implementation, resolution); device: where `load` puts the weights.
    """

    decodes_over_answer_list = True  # VQA: beam search over the answer trie (OFA's --beam-search-vqa-eval)

    def __init__(self, folder: Path, identity: TeacherIdentity, config: Any, device: Any, tokenizer: Any,
                 default_resolution: int | None = None):
        self.folder, self.identity, self.config, self.device = Path(folder), identity, config, torch.device(device)
        self.tokenizer = tokenizer
        self.resolution = config.resolution or folder_resolution(self.folder) or default_resolution
        self.processor = load_ofa_processor(self.folder, size=self.resolution, tokenizer=self.tokenizer)
        self.model: OFAModel | None = None

    @classmethod
    def from_pretrained(cls, folder: Path, ident: Mapping[str, Any], config: Any, device: Any,
                        default_resolution: int | None = None) -> "OFATeacher":
        """The teacher of an OFA folder: tokenizer and processor now, the weights at `load()`. The resolution is
        `config.resolution`, else the folder's processor's, else `default_resolution` (the task's)."""
        tokenizer = load_ofa_tokenizer(folder)
        identity = TeacherIdentity(family="ofa", source=dict(ident), tokenizer_sha256=tokenizer_sha256(tokenizer))
        return cls(folder, identity, config, device, tokenizer, default_resolution)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["model"] = None  # the workers only prepare: never ship the weights to them
        return state

    def load(self) -> None:
        """The frozen teacher (never DDP-wrapped), its weights in `config.dtype`, attention
        `config.attn_implementation`."""
        if self.model is None:
            model = load_pretrained(OFAModel, self.folder, dtype=getattr(torch, self.config.dtype),
                                    attn_implementation=self.config.attn_implementation)
            self.model = model.to(self.device).eval()

    def generation_settings(self, task: Any, candidates: Sequence[str] | None) -> dict[str, Any]:
        """OFA's evaluation settings with the task's decoding constraint over OFA's vocabulary (bins, answer trie)."""
        return dict(task.generate_kwargs(self.tokenizer, candidates))

    # ------------------------------------------------------------------------------------------ workers
    def prepare(self, rows: Sequence[Mapping[str, Any]], images: Sequence[Any], task: Any) -> dict[str, Any]:
        pixels = [self.processor.image_processor.process_image(img, size=self.resolution) for img in images]
        enc = self.tokenizer([task.prompt(r) for r in rows], return_tensors="pt", padding=True)
        return {"input_ids": enc["input_ids"], "patch_images": torch.from_numpy(np.stack(pixels)),
                "orig_sizes": [tuple(img.size) for img in images]}

    # ------------------------------------------------------------------------------------------ main process
    def _amp_dtype(self, model: OFAModel) -> torch.dtype | None:
        mp = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mp) if self.device.type != "cpu" else None
        return None if model.dtype != torch.float32 else amp  # half weights: already in the chosen type

    def infer(self, inputs: Mapping[str, Any], task: Any, settings: Mapping[str, Any]) -> list[list[Prediction]]:
        self.load()
        model, tok, device = self.model, self.tokenizer, self.device
        n = len(inputs["input_ids"])
        kwargs = {"input_ids": inputs["input_ids"].to(device),
                  "patch_images": inputs["patch_images"].to(device, model.dtype),
                  "patch_masks": torch.ones(n, dtype=torch.bool, device=device)}
        nret = settings["num_return_sequences"]
        amp_dtype = self._amp_dtype(model)
        amp = torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
        with torch.inference_mode(), amp:
            nbests = task.ofa_inference(model, tok, kwargs, settings, nret)  # VQA / entailment: OFA's own recipe
            if nbests is None:
                nbests = self._generate(kwargs, task, settings, n)
        return [[task.to_prediction(text, ids, lp, size, tok) for ids, text, lp in best]
                for best, size in zip(nbests, inputs["orig_sizes"])]

    def _generate(self, kwargs: dict[str, Any], task: Any, settings: Mapping[str, Any], n: int) -> list[NBest]:
        model, nret = self.model, settings["num_return_sequences"]
        # OFA's caption/grounding settings: fairseq SequenceGenerator's rules, its scores already log-probs
        gen_kwargs = dict(fairseq_rules.generate_kwargs(settings, self.tokenizer), output_scores=True,
                          return_dict_in_generate=True)
        if self.config.cache_implementation != "dynamic":
            gen_kwargs["cache_implementation"] = self.config.cache_implementation
        res = model.generate(**kwargs, **gen_kwargs)
        steps = model.compute_transition_scores(res.sequences, res.scores, getattr(res, "beam_indices", None),
                                                normalize_logits=settings.get("num_beams", 1) == 1
                                                and not fairseq_rules.uses_fairseq_rules(settings))
        flat = split_targets(res.sequences, steps.float(), model.config.eos_token_id, model.config.pad_token_id,
                             self.tokenizer, task)
        return [flat[k * nret: (k + 1) * nret] for k in range(n)]
