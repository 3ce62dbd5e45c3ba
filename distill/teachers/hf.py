"""`HFTeacher`: any transformers image-text model (`AutoModelForImageTextToText`, else `AutoModelForCausalLM` /
`AutoModelForSeq2SeqLM`) with its `AutoProcessor`, behind the model seam (`distill.seam.Model`): it distils, and
evaluate / predict / serve run it as they run OFA and NARVL.

How a task is inferred (by its `answer_space`):
- text tasks (caption, vqa): `generate()` with the run's settings; only the NEW tokens are kept (decoder-only
  families echo the prompt), cut after the first EOS, decoded without special tokens;
- box tasks (grounding): the same, decoded with the family's location tokens kept, and the first box of the family's
  location format (`distill.teachers.families`, `locations`) mapped back to the ORIGINAL image pixels;
- choice tasks (entailment): every candidate (`task.candidates`, e.g. yes/no/maybe) followed by EOS is scored by
  teacher forcing in one batched forward; the best is the label.
"""
from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import transformers
from transformers.models.auto import modeling_auto

from distill.errors import UserError
from distill.loading import load_pretrained
from distill.prediction import ModelIdentity, Prediction, tokenizer_sha256
from distill.seam import Model, ModelOptions
from distill.tasks import TASKS, get_task
from distill.teachers.families import Family, check_template, family_for, placeholders
from distill.teachers.hf_inputs import HFInputs, task_kind

GENERATE_KEYS = ("num_beams", "max_new_tokens", "min_new_tokens", "no_repeat_ngram_size", "num_return_sequences",
                 "length_penalty", "repetition_penalty", "do_sample", "temperature", "top_k", "top_p")
"""Settings passed on to `generate()`; the rest (OFA's decoding constraints over its own vocabulary: bin tokens,
answer tries) do not apply to another vocabulary and are dropped."""


def _auto_class(model_type: str):
    """The Auto class that maps `model_type` (image-text-to-text first)."""
    for mapping, name in ((modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES, "AutoModelForImageTextToText"),
                          (modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES, "AutoModelForSeq2SeqLM"),
                          (modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, "AutoModelForCausalLM")):
        if model_type in mapping:
            return getattr(transformers, name)
    raise UserError(f"teacher model_type {model_type!r} is not an image-text model transformers can generate with "
                    "(not in AutoModelForImageTextToText, AutoModelForSeq2SeqLM or AutoModelForCausalLM)")


def _ids(value) -> set[int]:
    if value is None:
        return set()
    return {int(v) for v in value} if isinstance(value, (list, tuple)) else {int(value)}


class HFTeacher(Model):
    """A transformers image-text model as a teacher (see the module docstring).

    Built from its folder's config, generation config and processor; the weights load at `load()` (a run with
    nothing to do, or a bad input, never reads them)."""

    resolution = None  # the processor decides the image size
    own_prompts = True  # the family's template, not OFA's prompt: rows keep it as `teacher_prompt`

    def __init__(self, folder: Path, auto_class: Any, model_config: Any, generation: Any, processor: Any,
                 family: Family, identity: ModelIdentity, options: ModelOptions, device: Any,
                 template: str | None = None):
        self.folder, self.auto_class, self.options = Path(folder), auto_class, options
        self.device = torch.device(device)
        self.family, self.identity, self.generation = family, identity, generation
        self.model, self.accepted = None, set()
        self.encoder_decoder = bool(getattr(model_config, "is_encoder_decoder", False))
        tok = processor.tokenizer
        self.eos_ids = _ids(generation.eos_token_id) | _ids(tok.eos_token_id)
        eos = _ids(generation.eos_token_id) or _ids(tok.eos_token_id)
        if not eos:
            raise UserError(f"teacher {folder} has no EOS token (generation_config.eos_token_id, "
                            "tokenizer.eos_token_id)")
        eos_id = int(tok.eos_token_id) if tok.eos_token_id in eos else min(eos)
        self.pad_id = generation.pad_token_id if generation.pad_token_id is not None else tok.pad_token_id
        prefix = []
        if self.encoder_decoder:
            start = generation.decoder_start_token_id
            if start is None:
                start = getattr(model_config, "decoder_start_token_id", None)
            forced = generation.forced_bos_token_id
            prefix = [int(start)] + ([int(forced)] if forced is not None else [])
        else:
            tok.padding_side = "left"  # generation continues every row from its last prompt token
        self.inputs = HFInputs(processor, family, template, self.encoder_decoder, prefix, eos_id)

    @classmethod
    def from_pretrained(cls, folder: str | Path, ident: Mapping[str, Any], options: ModelOptions, device: Any,
                        task: Any = None) -> HFTeacher:
        """The teacher of a `save_pretrained` folder: config, generation config and processor now, the weights at
        `load()`; `ident` is the teacher's source record ({"id", "revision"/"sha256"})."""
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise UserError(f"teacher {folder} has no config.json")
        template = options.prompt_template
        if template:  # any registered task's placeholders; `check_task` then checks the task's own
            check_template(template, tuple(dict.fromkeys(p for name in TASKS for p in placeholders(get_task(name)))))
        model_config = transformers.AutoConfig.from_pretrained(str(folder))
        model_type = model_config.model_type
        auto = _auto_class(model_type)
        try:
            processor = transformers.AutoProcessor.from_pretrained(str(folder))
        except (OSError, ValueError) as exc:  # no processor / image processor files: a long Hub-flavoured message
            raise UserError(f"teacher {folder}: AutoProcessor cannot load its processor "
                            f"({str(exc).splitlines()[0].split('. ')[0]})") from exc
        if not hasattr(processor, "tokenizer") or not hasattr(processor, "image_processor"):
            raise UserError(f"teacher {folder}: its AutoProcessor ({type(processor).__name__}) has no tokenizer + "
                            "image processor pair")
        if (folder / "generation_config.json").is_file():
            generation = transformers.GenerationConfig.from_pretrained(str(folder))
        else:
            generation = transformers.GenerationConfig.from_model_config(model_config)
        family = family_for(model_type, bool(getattr(processor, "chat_template", None)))
        # the generation config changes outputs (EOS ids, biases): it is part of the identity
        gen_sha = hashlib.sha256(generation.to_json_string(use_diff=True).encode("utf-8")).hexdigest()
        identity = ModelIdentity(
            family=model_type, source=dict(ident), tokenizer_sha256=tokenizer_sha256(processor.tokenizer),
            extra={"prompt_template": template, "model_class": auto.__name__, "generation_config_sha256": gen_sha,
                   **family.extra})
        return cls(folder, auto, model_config, generation, processor, family, identity, options, device, template)

    def load(self) -> None:
        """The frozen model on the device, weights in `options.dtype`, attention `options.attn_implementation`."""
        if self.model is None:
            model = load_pretrained(self.auto_class, self.folder, dtype=getattr(torch, self.options.dtype),
                                    attn_implementation=self.options.attn_implementation)
            model.generation_config = self.generation
            self.model = model.to(self.device).eval()
            self.accepted = set(inspect.signature(model.forward).parameters)  # the inputs it names

    @property
    def processor(self):
        return self.inputs.processor

    def check_task(self, task: Any) -> None:
        """Raise a UserError before any batch when this family cannot infer `task` (grounding without a box
        format)."""
        self.inputs.check_task(task)

    def settings(self, task: Any, candidates: Sequence[str] | None = None,
                 overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The task's decoding settings that apply to any vocabulary (beams, lengths, n-gram blocking; OFA's
        constraints over its own bins and answer trie do not), greedy unless they say otherwise, then `overrides`.
        Box tasks get the family's budget (Florence-2 writes the phrase before its location tokens: OFA's 4 tokens
        are too few)."""
        self.inputs.check_task(task)
        overrides = dict(overrides or {})
        if overrides.pop("vqa_mode", None) not in (None, "beam"):
            raise UserError(f"`vqa_mode` applies to OFA teachers; {self.identity.family} generates its answers freely")
        gen = {k: v for k, v in task.generation.items() if k in GENERATE_KEYS and v is not None}
        if task_kind(task) == "box":
            gen.pop("min_new_tokens", None)
            gen["max_new_tokens"] = self.family.grounding_max_new_tokens
        gen.update({k: v for k, v in overrides.items() if v is not None})
        gen.setdefault("num_return_sequences", 1)
        if task_kind(task) == "choice" and gen["num_return_sequences"] > len(task.candidates):
            raise UserError(f"`num_return_sequences` {gen['num_return_sequences']} exceeds the "
                            f"{len(task.candidates)} candidates of {task.name}")
        return gen

    def describe(self, task: Any, settings: Mapping[str, Any]) -> str:
        return "AR candidate scoring" if task_kind(task) == "choice" else super().describe(task, settings)

    @property
    def tokenizer(self) -> Any:
        return self.inputs.tokenizer

    def prepare(self, rows, images, task) -> dict[str, Any]:
        return self.inputs(rows, images, task)

    # ------------------------------------------------------------------------------------------------ inference
    def _to_device(self, tensors: Mapping[str, Any]) -> dict[str, Any]:
        """The processor's outputs that the model's forward names (GIT takes no `token_type_ids`), on its device and
        dtype."""
        out = {}
        for key, value in tensors.items():
            if key not in self.accepted:
                continue
            if torch.is_tensor(value):
                value = value.to(self.model.device)
                if value.is_floating_point():
                    value = value.to(self.model.dtype)
            out[key] = value
        return out

    def infer(self, inputs, task, settings) -> list[list[Prediction]]:
        self.load()
        out: list[list[Prediction]] = [[] for _ in inputs["orig_sizes"]]
        with torch.inference_mode():
            for rows, group in self._groups(inputs):
                if inputs["kind"] == "choice":
                    preds = self._choose(group, int(settings.get("num_return_sequences", 1)))
                else:
                    preds = self._generate(group, settings)
                for i, p in zip(rows, preds):
                    out[i] = p
        return out

    def _groups(self, inputs) -> list[tuple[list[int], dict]]:
        """[(sample indices, their inputs)]: the whole batch, or for candidate scoring with a family whose forward
        ignores the attention mask in its positions (`Family.unpadded`) one group per prompt length with the left
        padding cut off."""
        n = len(inputs["orig_sizes"])
        choice = inputs["kind"] == "choice"
        if not (self.family.unpadded and choice) or self.encoder_decoder:
            return [(list(range(n)), inputs)]
        enc, k = inputs["model_inputs"], len(inputs["candidates"])
        seq, width = enc["input_ids"].shape[1], inputs["choice_start"]
        lengths = enc["attention_mask"][::k, :width].sum(1).tolist()
        by_length: dict[int, list[int]] = {}
        for i, length in enumerate(lengths):
            by_length.setdefault(int(length), []).append(i)
        groups = []
        for length, samples in by_length.items():
            rows = [i * k + c for i in samples for c in range(k)]
            sub = {}
            for key, value in enc.items():
                if torch.is_tensor(value) and value.dim() and value.shape[0] == n * k:
                    value = value[rows]
                    if value.dim() == 2 and value.shape[1] == seq:
                        value = value[:, width - length:]
                sub[key] = value
            sizes = [inputs["orig_sizes"][i] for i in samples]
            groups.append((samples, dict(inputs, model_inputs=sub, orig_sizes=sizes, choice_start=length,
                                         choice_mask=inputs["choice_mask"][rows])))
        return groups

    def _cut(self, ids: list[int]) -> tuple[list[int], int]:
        """(ids up to and including the first EOS, EOS appended if missing; how many were generated ids)."""
        kept = []
        for tok in ids:
            if tok in self.eos_ids:
                kept.append(tok)
                break
            if tok == self.pad_id:
                break
            kept.append(tok)
        n = len(kept)
        if not kept or kept[-1] not in self.eos_ids:
            kept.append(self.inputs.eos_id)
        return kept, n

    def _text(self, ids: list[int], kind: str) -> str:
        tok = self.inputs.tokenizer
        body = [t for t in ids if t not in self.eos_ids]
        if kind != "box":
            return tok.decode(body, skip_special_tokens=True).strip()
        text = tok.decode(body, skip_special_tokens=False)  # location tokens may be special tokens (Qwen)
        for special in {tok.bos_token, tok.pad_token, tok.unk_token} - {None}:
            text = text.replace(special, "")
        return text.strip()

    def _generate(self, inputs, settings) -> list[list[Prediction]]:
        kind, n = inputs["kind"], len(inputs["orig_sizes"])
        # deterministic unless the settings sample (some models' own generation configs do)
        gen = {"do_sample": False, **{k: settings[k] for k in GENERATE_KEYS if settings.get(k) is not None}}
        nret = int(gen.get("num_return_sequences", 1))
        if nret > int(gen.get("num_beams", 1)) and not gen.get("do_sample"):
            gen["num_beams"] = nret
        if self.options.cache_implementation != "dynamic":
            gen["cache_implementation"] = self.options.cache_implementation
        res = self.model.generate(**self._to_device(inputs["model_inputs"]), **gen, output_scores=True,
                                  return_dict_in_generate=True)
        beam = int(gen.get("num_beams", 1)) > 1
        steps = self.model.compute_transition_scores(res.sequences, res.scores, getattr(res, "beam_indices", None),
                                                     normalize_logits=not beam).float()
        start = inputs["prompt_len"] if not self.encoder_decoder else res.sequences.shape[1] - steps.shape[1]
        new, steps = res.sequences[:, start:].tolist(), steps.tolist()
        out = []
        for i in range(n):
            w, h = inputs["orig_sizes"][i]
            best = []
            for j in range(i * nret, (i + 1) * nret):
                ids, generated = self._cut(new[j])
                text = self._text(ids, kind)
                pred = Prediction(text=text, ids=ids, logprob=float(sum(steps[j][:generated])))
                if kind == "box":
                    boxes = self.family.boxes(text, w, h, inputs["resized_sizes"][i])
                    pred.box = [float(v) for v in boxes[0]] if boxes else None
                best.append(pred)
            out.append(best)
        return out

    def _choose(self, inputs, nret: int) -> list[list[Prediction]]:
        """Score every (row, candidate) sequence by teacher forcing; per row the candidates best first."""
        enc = self._to_device(inputs["model_inputs"])
        start, width = inputs["choice_start"], inputs["choice_width"]
        kwargs = {}
        if not self.encoder_decoder and "logits_to_keep" in self.accepted:
            kwargs["logits_to_keep"] = width + 1  # positions start-1 .. end: only the candidates' predictions
        logits = self.model(**enc, **kwargs).logits.float()
        seq = enc["decoder_input_ids"] if self.encoder_decoder else enc["input_ids"]
        targets = seq[:, start: start + width]
        # counted from the end: the candidates close every sequence, and some models (GIT) put image positions
        # before the text in their logits
        pred = logits[:, -(width + 1): -1]
        lp = torch.log_softmax(pred, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        mask = inputs["choice_mask"].to(lp.device).bool()
        totals = lp.masked_fill(~mask, 0.0).sum(-1).view(-1, len(inputs["candidates"])).tolist()
        forced = self.inputs.decoder_prefix[1:]  # a forced BOS after the decoder start, as generate() writes it
        out = []
        for row in totals:
            order = sorted(range(len(row)), key=lambda c: -row[c])[: max(1, nret)]
            out.append([Prediction(text=inputs["candidates"][c], ids=forced + list(inputs["candidate_ids"][c]),
                                   logprob=float(row[c]), label=inputs["candidates"][c]) for c in order])
        return out
