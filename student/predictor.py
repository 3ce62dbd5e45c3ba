"""`Predictor`: a model bound to one task, for applications and the HTTP server.

The model is a NARVL student folder (PyTorch), its ONNX export (onnxruntime) or an OFA teacher folder (`generate()`);
`Predictor.from_pretrained` tells them apart. Inputs are encoded and outputs decoded by the code `narvl-pipe
evaluate` / `predict` run (`student.evaluate.predict_rows`), so a prediction does not depend on the entry point.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import torch

from distill.errors import UserError

from distill.tasks import get_task

from .data import encode_prompts
from .evaluate import LoadedModel, Prediction, load_model, predict_rows
from .onnx_model import ONNXNARVLModel

__all__ = ["Predictor"]


class Predictor:
    """One model and one task: canonical rows (or request fields) in, `Prediction`s out.

    Args:
        loaded (LoadedModel): the model with its `OFAProcessor` (`student.evaluate.load_model`).
        task (str): caption, vqa, grounding or entailment.
        candidates (Sequence[str] | None): VQA answer list, which an AR teacher's constrained decoding needs.
    """

    def __init__(self, loaded: LoadedModel, task: str, candidates: Sequence[str] | None = None):
        self.loaded = loaded
        self.task = get_task(task)
        if self.task.needs_answer_list and loaded.kind == "ofa" and not candidates:
            raise UserError(f"{self.task.name} with the AR teacher needs its candidate answer list (`answers`)")
        self.candidates = list(candidates) if candidates else None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, task: str | None = None,
                        device: str | torch.device | None = None, answers: str | None = None) -> "Predictor":
        """Load a NARVL student folder, a NARVL ONNX export folder or an OFA teacher folder.

        `task` defaults to the one the student was trained for (its config's `task`); an OFA teacher needs it.
        `answers` is a VQA candidate list file (one answer a line), for an AR teacher only.
        """
        loaded = load_model(path, device)
        task = task or getattr(loaded.model.config, "task", None)
        if task is None:
            raise UserError(f"{path} records no task: give the task (caption, vqa, grounding or entailment)")
        candidates = get_task(task).answer_list(answers) if answers else None
        return cls(loaded, task, candidates)

    @property
    def backend(self) -> str:
        """`onnx` (onnxruntime) or `torch`."""
        return "onnx" if isinstance(self.loaded.model, ONNXNARVLModel) else "torch"

    @property
    def text_fields(self) -> tuple[str, ...]:
        """The text fields this task reads (`Task.text_columns`): the required one first, then the optional ones
        (entailment's premise)."""
        return tuple(self.task.text_columns)

    def row(self, image: Any, fields: Mapping[str, Any], row_id: str = "request") -> dict[str, Any]:
        """A canonical row from an image (anything `distill.images.load_image` takes) and text fields.

        The image is decoded fully here, so that a broken one is refused before it joins a batch. Raises
        `UserError` (an `ImageLoadError` for the image) naming what is wrong.
        """
        from distill.images import load_image

        row: dict[str, Any] = {"id": row_id, "image": load_image(image, name="the request image")}
        for i, name in enumerate(self.text_fields):
            value = fields.get(name)
            if value is not None and not isinstance(value, str):
                raise UserError(f"field {name!r} must be a string, got {type(value).__name__}")
            required = i == 0
            if required and not (value or "").strip():
                raise UserError(f"task {self.task.name} needs the text field {name!r}")
            row[name] = value or ""
        return row

    def predict_rows(self, rows: Sequence[Mapping[str, Any]], num_beams: int | None = None) -> list[Prediction]:
        """Predictions for canonical rows, run as one batch."""
        if not rows:
            return []
        res = predict_rows(self.loaded, self.task, list(rows), batch_size=len(rows), num_beams=num_beams,
                           candidates=self.candidates)
        if res.skipped:  # an unreadable image: refuse the batch rather than return misaligned predictions
            raise UserError(f"row {res.skipped[0]['index']}: {res.skipped[0]['reason']}")
        return [Prediction(output=text, prediction=pred) for text, pred in zip(res.texts, res.predictions)]

    def predict(self, image: Any, num_beams: int | None = None, **fields: str) -> Prediction:
        """One prediction; `fields` are the task's text fields (``question=``, ``region_text=``, ``hypothesis=``,
        ``premise=``)."""
        return self.predict_rows([self.row(image, fields)], num_beams)[0]

    @torch.inference_mode()
    def logits(self, rows: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        """A NARVL student's scores for rows run as one batch, shape ``(B, N, V + 1)``, on the CPU."""
        if self.loaded.kind != "narvl":
            raise UserError("logits are defined for a NARVL student (its CTC frames), not for an AR teacher")
        lm = self.loaded
        inputs = encode_prompts([dict(r) for r in rows], self.task, lm.processor)
        inputs = {k: v.to(lm.model.device) for k, v in inputs.items()}
        return lm.model(**inputs).logits.float().cpu()
