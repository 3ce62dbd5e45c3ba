"""`OFATeacher`: OFA (`distill.ofa.OFAModel`) behind the model seam (`distill.seam.Model`), decoding each task as OFA
evaluates it.

- `prepare` (DataLoader workers): the task's OFA prompt and the image through `OFAProcessor` (`<s> prompt </s>`
  right-padded; the image resized to the square resolution and normalised);
- `infer` (main process), by the task's `answer_space`:
  - `text`: `generate()` with the task's settings, `compute_transition_scores` for each beam's log-prob;
  - `box`: the same, every step restricted to the `<bin_k>` tokens, the bins decoded into a box in original pixels;
  - `answer_list` (VQA): the `prev_output` prompt forced, then beam search over the answer trie (`vqa_mode`
    beam, OFA's `--beam-search-vqa-eval`) or every candidate scored (`allcand`) (`distill.teachers.ofa_decoding`);
  - `candidates` (SNLI-VE): every candidate scored after the `prev_output` prompt.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from distill.errors import UserError
from distill.loading import load_pretrained
from distill.ofa import OFAModel, fairseq_rules
from distill.ofa.processing_ofa import OFAProcessor, load_ofa_processor
from distill.ofa.tokenization_ofa import bin_token_ids, load_ofa_tokenizer
from distill.prediction import ModelIdentity, Prediction, tokenizer_sha256
from distill.seam import Model, ModelOptions, amp_context
from distill.teachers.ofa_decoding import beam_search_answers, rank_candidates

NBest = list[tuple[list[int], str, float]]
VQA_MODES = ("beam", "allcand")
"""OFA's two VQA inference types: beam search over the answer trie (`--beam-search-vqa-eval`), or every candidate
scored (its default validation, `--val-inference-type allcand`)."""
NOT_GENERATE_KEYS = ("vqa_mode", "candidates")
"""Settings `infer` reads itself; the rest are `generate()` kwargs."""


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
        result.append((ids, task.output_text(ids, tokenizer), total))
    return result


class OFATeacher(Model):
    """An OFA model: a folder (`save_pretrained` or OFA-Sys layout) opened by `from_pretrained`, or a module being
    trained (`from_module`, for in-training evaluation).

    Args:
        processor: the `OFAProcessor` (tokenizer + image processor); identity: what datasets record;
        options: dtype, attention and cache implementation; device: where `load` puts the weights;
        resolution: the square side images are resized to; folder: where `load` reads the weights (None: `model`).
    """

    decodes_over_answer_list = True  # VQA: beam search over the answer trie (OFA's --beam-search-vqa-eval)

    def __init__(self, processor: OFAProcessor, identity: ModelIdentity, options: ModelOptions, device: Any,
                 resolution: int, folder: Path | None = None, model: OFAModel | None = None):
        self.processor, self.identity, self.options = processor, identity, options
        self.device, self.resolution, self.folder, self.model = torch.device(device), resolution, folder, model

    @classmethod
    def from_pretrained(cls, folder: Path, ident: Mapping[str, Any], options: ModelOptions, device: Any,
                        task: Any = None) -> "OFATeacher":
        """The teacher of an OFA folder: tokenizer and processor now, the weights at `load()`. The resolution is
        `options.resolution`, else the folder's image processor's, else the task's (OFA-Sys folders have no image
        processor)."""
        if options.prompt_template:
            raise UserError("`prompt_template` applies to transformers teachers; OFA reads the task's own prompt")
        folder = Path(folder)
        resolution = options.resolution or folder_resolution(folder) or getattr(task, "resolution", None)
        if resolution is None:
            raise UserError(f"{folder} has no image processor (preprocessor_config.json): give the task or "
                            "`resolution`")
        tokenizer = load_ofa_tokenizer(folder)
        identity = ModelIdentity(family="ofa", source=dict(ident), tokenizer_sha256=tokenizer_sha256(tokenizer))
        processor = load_ofa_processor(folder, size=resolution, tokenizer=tokenizer)
        return cls(processor, identity, options, device, resolution, folder=folder)

    @classmethod
    def from_module(cls, model: OFAModel, processor: OFAProcessor) -> "OFATeacher":
        """A module in memory (in-training evaluation of `train-teacher`), run where it is."""
        identity = ModelIdentity(family="ofa", source={"id": "in-training"},
                                 tokenizer_sha256=tokenizer_sha256(processor.tokenizer))
        return cls(processor, identity, ModelOptions(), model.device, processor.image_processor.size, model=model)

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def load(self) -> None:
        """The frozen teacher (never DDP-wrapped), its weights in `options.dtype`, attention
        `options.attn_implementation`."""
        if self.model is None:
            model = load_pretrained(OFAModel, self.folder, dtype=getattr(torch, self.options.dtype),
                                    attn_implementation=self.options.attn_implementation)
            self.model = model.to(self.device).eval()

    # ------------------------------------------------------------------------------------------ settings
    def settings(self, task: Any, candidates: Sequence[str] | None = None,
                 overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """OFA's evaluation settings for the task, its constraint over OFA's vocabulary (the bins; the answer list
        and `vqa_mode`), then `overrides`."""
        overrides = dict(overrides or {})
        mode = overrides.pop("vqa_mode", None)
        settings = super().settings(task, None, overrides)
        space = task.answer_space
        if space == "box":
            settings.update(self._bins_constraint(task))
        elif space == "answer_list":
            if not candidates:
                raise UserError(f"{task.name} with an OFA model needs `answers` FILE: the candidate answer list it "
                                "decodes over (OFA's dataset/vqa_data/trainval_ans2label.pkl, or a text/JSON list)")
            mode = mode or "beam"
            if mode not in VQA_MODES:
                raise UserError(f"`vqa_mode` must be one of {', '.join(VQA_MODES)}, got {mode!r}")
            settings.update(candidates=list(candidates), vqa_mode=mode)
        if mode not in (None, "beam") and space != "answer_list":
            raise UserError(f"`vqa_mode` applies to answer-list tasks (vqa), not to {task.name}")
        limit = (len(task.candidates) if space == "candidates"
                 else len(candidates) if settings.get("vqa_mode") == "allcand"
                 else int(settings.get("num_beams", 1) or 1))
        if settings["num_return_sequences"] > limit:
            raise UserError(f"`num_return_sequences` {settings['num_return_sequences']} exceeds the {limit} outputs "
                            f"OFA's {task.name} decoding has (`num_beams`)")
        fairseq_rules.check_settings(settings)  # e.g. `max_new_tokens` below grounding's 4 tokens + EOS
        return settings

    def _bins_constraint(self, task: Any) -> dict[str, Any]:
        """A box task decodes over the bins: fairseq's `constraint_range` renormalises the log-probs over the bins
        and the 4 specials (`<s> <pad> </s> <unk>`); `<pad>`, and EOS before the 5th step, are excluded by fairseq's
        rules, `<s>` and `<unk>` by `suppress_tokens`, so that the teacher always writes a box. OFA's own RefCOCO
        evaluation sets no `constraint_range` (`run_scripts/refcoco/evaluate_refcoco.sh`); a bin hypothesis
        scores as under fairseq's `--constraint-range`."""
        bins, tok = bin_token_ids(self.tokenizer), self.tokenizer
        if not bins:
            raise UserError(f"{task.name} needs a tokenizer with <bin_k> tokens")
        specials = [t for t in range(fairseq_rules.NUM_SPECIALS) if t not in (tok.pad_token_id, tok.eos_token_id)]
        return {"constraint_range": [bins[0], bins[-1] + 1], "suppress_tokens": specials}

    def describe(self, task: Any, settings: Mapping[str, Any]) -> str:
        if task.answer_space == "candidates" or settings.get("vqa_mode") == "allcand":
            return "AR candidate scoring"  # OFA scores the candidates, it does not generate
        label = super().describe(task, settings)
        return {"answer_list": label + " over answer trie", "box": label + ", 4 bins"}.get(task.answer_space, label)

    # ------------------------------------------------------------------------------------------ workers
    def prepare(self, rows: Sequence[Mapping[str, Any]], images: Sequence[Any], task: Any) -> dict[str, Any]:
        enc = self.processor(text=[task.prompt(r) for r in rows], images=list(images), size=self.resolution)
        return {"input_ids": enc["input_ids"], "patch_images": enc["patch_images"],
                "orig_sizes": [tuple(img.size) for img in images]}

    # ------------------------------------------------------------------------------------------ main process
    def infer(self, inputs: Mapping[str, Any], task: Any, settings: Mapping[str, Any]) -> list[list[Prediction]]:
        self.load()
        model, tok, device = self.model, self.tokenizer, self.model.device
        n = len(inputs["input_ids"])
        kwargs = {"input_ids": inputs["input_ids"].to(device),
                  "patch_images": inputs["patch_images"].to(device, model.dtype),
                  "patch_masks": torch.ones(n, dtype=torch.bool, device=device)}
        nret = int(settings.get("num_return_sequences", 1))
        with torch.inference_mode(), amp_context(device, model.dtype):
            if task.answer_space == "candidates":
                nbests = rank_candidates(model, tok, kwargs, task.candidates, nret)
            elif task.answer_space == "answer_list" and settings["vqa_mode"] == "allcand":
                nbests = rank_candidates(model, tok, kwargs, settings["candidates"], nret)
            elif task.answer_space == "answer_list":
                nbests = beam_search_answers(model, tok, kwargs, settings["candidates"],
                                             int(settings.get("num_beams", 5)), nret)
            else:
                nbests = self._generate(kwargs, task, settings, n)
        return [[task.to_prediction(text, ids, lp, size, tok) for ids, text, lp in best]
                for best, size in zip(nbests, inputs["orig_sizes"])]

    def _generate(self, kwargs: dict[str, Any], task: Any, settings: Mapping[str, Any], n: int) -> list[NBest]:
        model, nret = self.model, int(settings.get("num_return_sequences", 1))
        # caption/grounding: fairseq SequenceGenerator's rules, built per call (its stopping criterion holds state),
        # their scores already log-probs
        gen_kwargs = fairseq_rules.generate_kwargs({k: v for k, v in settings.items() if k not in NOT_GENERATE_KEYS},
                                                   self.tokenizer)
        gen_kwargs.update(output_scores=True, return_dict_in_generate=True)
        if self.options.cache_implementation != "dynamic":
            gen_kwargs["cache_implementation"] = self.options.cache_implementation
        res = model.generate(**kwargs, **gen_kwargs)
        steps = model.compute_transition_scores(res.sequences, res.scores, getattr(res, "beam_indices", None),
                                                normalize_logits=settings.get("num_beams", 1) == 1
                                                and not fairseq_rules.uses_fairseq_rules(settings))
        flat = split_targets(res.sequences, steps.float(), model.config.eos_token_id, model.config.pad_token_id,
                             self.tokenizer, task)
        return [flat[k * nret: (k + 1) * nret] for k in range(n)]
