"""The picklable half of `HFTeacher`: prompts and model inputs built in the DataLoader workers (CPU, no model).

`prepare` output (what `HFTeacher.infer` reads): `kind` (text / box / choice), `prompts` (the filled templates),
`orig_sizes` ((width, height) of each original image), then for text and box tasks `model_inputs` (the processor's
tensors), `prompt_len` (decoder-only: the padded prompt width; generation continues after it) and `resized_sizes`
(the image as fed to the model, where the processor says: Qwen-VL), and for choice tasks `model_inputs` with every
(row, candidate) sequence, `choice_start`, `choice_width`, `choice_mask`, `candidates`, `candidate_ids`.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from distill.errors import UserError
from distill.teachers.families import Family, box_families, chat_text, check_template, placeholders


def task_kind(task: Any) -> str:
    """How a transformers teacher infers `task` (its `answer_space`): "choice" (score each candidate), "box"
    (generate, then parse the family's location format), else "text" (generate; an answer-list task's answers are
    generated freely)."""
    return {"candidates": "choice", "box": "box"}.get(task.answer_space, "text")


class HFInputs:
    """The picklable half of `HFTeacher` (processor, family, template): builds model inputs in DataLoader workers."""

    def __init__(self, processor: Any, family: Family, template: str | None, encoder_decoder: bool,
                 decoder_prefix: list[int], eos_id: int):
        self.processor, self.family, self.template = processor, family, template
        self.encoder_decoder, self.decoder_prefix, self.eos_id = encoder_decoder, decoder_prefix, eos_id

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def prompts(self, rows: Sequence[Mapping[str, Any]], task: Any) -> list[str]:
        """The teacher's prompt per row (the family's template filled; before any chat wrapping)."""
        return [self.family.prompt(task, row, self.template) for row in rows]

    def _encode(self, images: Sequence[Any], prompts: Sequence[str]) -> dict:
        kwargs = {}
        if self.family.chat:
            texts = [chat_text(self.processor, p) for p in prompts]
        elif self.family.image_prefix:
            texts = [self.processor.image_token + p for p in prompts]
        elif self.family.bos_prefix:
            bos = self.tokenizer.bos_token or self.tokenizer.cls_token
            texts, kwargs = [bos + p for p in prompts], {"add_special_tokens": False}
        else:
            texts = list(prompts)
        enc = self.processor(images=list(images), text=texts, return_tensors="pt", padding=True, **kwargs)
        enc.pop("labels", None)  # PaliGemma's processor adds training labels for backward compatibility
        return dict(enc)

    def check_task(self, task: Any) -> str:
        """The task's kind; a UserError when the family cannot infer it (a box task without a location format, a
        template naming a column the task has not)."""
        if self.template:
            check_template(self.template, placeholders(task))
        kind = task_kind(task)
        if kind == "box" and self.family.boxes is None:
            raise UserError(f"teacher family {self.family.name} has no location format, so it cannot distil "
                            f"{task.name}; families that can: {', '.join(box_families())}")
        return kind

    def __call__(self, rows, images, task) -> dict[str, Any]:
        kind = self.check_task(task)
        prompts = self.prompts(rows, task)
        out: dict[str, Any] = {"kind": kind, "prompts": prompts, "orig_sizes": [tuple(im.size) for im in images]}
        if kind == "choice":
            out.update(self._choice_inputs(images, prompts, list(task.candidates)))
            return out
        enc = self._encode(images, prompts)
        out["model_inputs"] = enc
        out["prompt_len"] = 0 if self.encoder_decoder else int(enc["input_ids"].shape[1])
        out["resized_sizes"] = self._resized(enc, len(images))
        return out

    def _resized(self, enc: Mapping[str, Any], n: int) -> list[tuple[int, int] | None]:
        """(width, height) of each image as fed to the model, for families whose boxes are in those pixels (the
        Qwen-VL processors' `image_grid_thw` counts patches)."""
        grid = enc.get("image_grid_thw")
        patch = getattr(self.processor.image_processor, "patch_size", None)
        if grid is None or patch is None or len(grid) != n:
            return [None] * n
        return [(int(g[2]) * patch, int(g[1]) * patch) for g in grid.tolist()]

    def _choice_inputs(self, images, prompts, candidates: list[str]) -> dict[str, Any]:
        """Each (row, candidate) pair as one teacher-forced sequence: the prompt (left-padded for decoder-only
        models), then the candidate's ids + EOS (right-padded). `choice_mask` marks the scored tokens."""
        k = len(candidates)
        enc = self._encode([im for im in images for _ in range(k)], [p for p in prompts for _ in range(k)])
        cand = [self.tokenizer(c, add_special_tokens=False)["input_ids"] + [self.eos_id] for c in candidates]
        width = max(len(c) for c in cand)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id
        n = len(images) * k
        tail = torch.full((n, width), pad, dtype=torch.long)
        tail_mask = torch.zeros((n, width), dtype=torch.long)
        for i in range(n):
            ids = cand[i % k]
            tail[i, : len(ids)] = torch.tensor(ids)
            tail_mask[i, : len(ids)] = 1
        if self.encoder_decoder:
            prefix = torch.tensor([self.decoder_prefix] * n, dtype=torch.long)
            enc["decoder_input_ids"] = torch.cat([prefix, tail], dim=1)
            enc["decoder_attention_mask"] = torch.cat([torch.ones_like(prefix), tail_mask], dim=1)
            start = prefix.shape[1]
        else:
            start = enc["input_ids"].shape[1]
            for key, value in list(enc.items()):
                if key == "input_ids":
                    enc[key] = torch.cat([value, tail], dim=1)
                elif key == "attention_mask":
                    enc[key] = torch.cat([value, tail_mask], dim=1)
                elif key == "token_type_ids":  # PaliGemma: 0 = prefix (bidirectional), 1 = the answer
                    enc[key] = torch.cat([value, torch.ones_like(tail)], dim=1)
                elif torch.is_tensor(value) and value.shape == (n, start):  # e.g. mm_token_type_ids: text = 0
                    enc[key] = torch.cat([value, torch.zeros_like(tail)], dim=1)
        return {"model_inputs": enc, "choice_start": start, "choice_width": width, "choice_mask": tail_mask,
                "candidates": candidates, "candidate_ids": cand}
