"""`Predictor`: a model bound to one task, for applications and the HTTP server.

The model is anything behind the seam (`distill.seam.Model`): a NARVL student (PyTorch or its ONNX export), an OFA
teacher or a transformers teacher. Rows become inputs and outputs become predictions through the code `narvl-pipe
evaluate` / `predict` run (`student.evaluate.predict_rows`), so a prediction does not depend on the entry point.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import torch

from distill.errors import UserError
from distill.hub_ids import resolve_model_folder
from distill.images import load_image
from distill.jsonio import read_json
from distill.seam import Model, ModelOptions, prepare_rows
from distill.tasks import get_task

from .evaluate import Answer, open_for_task, predict_rows, request_fields
from .runner import NARVLStudent

__all__ = ["Predictor"]


class Predictor:
    """One model and one task: canonical rows (or request fields) in, `Answer`s out.

    Args:
        model (Model): the model behind the seam (`distill.loader.load_model`).
        task (str): caption, vqa, grounding, entailment or a registered task.
        candidates (Sequence[str] | None): the answer list of a model that decodes over one (OFA on VQA).
        num_beams (int | None): beams (None: the model's default for the task).
    """

    def __init__(self, model: Model, task: str, candidates: Sequence[str] | None = None,
                 num_beams: int | None = None):
        self.model, self.task = model, get_task(task)
        self.model.check_task(self.task)
        self.settings = model.settings(self.task, candidates, {"num_beams": num_beams})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, task: str | None = None,
                        device: str | torch.device | None = None, answers: str | None = None,
                        options: ModelOptions | None = None) -> "Predictor":
        """Open any model folder or Hub id (`distill.loader.load_model`) and load its weights.

        `task` defaults to the one a student was trained for (its config's `task`); a teacher needs it. `answers`
        is the answer list file of a model that decodes over one (OFA on VQA)."""
        if task is None:
            folder, _ = resolve_model_folder(os.fspath(path))
            task = read_json(folder / "config.json").get("task")
            if task is None:
                raise UserError(f"{path} records no task: give the task (caption, vqa, grounding or entailment)")
        model, candidates = open_for_task(os.fspath(path), get_task(task), answers=answers, options=options,
                                          device=device)
        model.load()
        return cls(model, task, candidates)

    @property
    def backend(self) -> str:
        """`onnx` (onnxruntime) or `torch`."""
        return self.model.backend

    @property
    def text_fields(self) -> tuple[str, ...]:
        """The text fields this task reads (`Task.text_columns`): the required one first, then the optional ones
        (entailment's premise)."""
        return tuple(self.task.text_columns)

    def row(self, image: Any, fields: Mapping[str, Any], row_id: str = "request") -> dict[str, Any]:
        """A canonical row from an image (anything `distill.images.load_image` takes) and the task's text fields.

        The image is decoded fully here, so that a broken one is refused before it joins a batch. Raises
        `UserError` (an `ImageLoadError` for the image) naming what is wrong."""
        image = load_image(image, name="the request image")
        return {"id": row_id, "image": image, **request_fields(self.task, None, dict(fields))}

    def predict_rows(self, rows: Sequence[Mapping[str, Any]]) -> list[Answer]:
        """Predictions for canonical rows, run as one batch."""
        if not rows:
            return []
        res = predict_rows(self.model, self.task, list(rows), self.settings, batch_size=len(rows))
        if res.skipped:  # an unreadable image: refuse the batch rather than return misaligned predictions
            raise UserError(f"row {res.skipped[0]['index']}: {res.skipped[0]['reason']}")
        return [Answer(output=p.text, prediction=s) for p, s in zip(res.predictions, res.scored)]

    def predict(self, image: Any, **fields: str) -> Answer:
        """One prediction; `fields` are the task's text fields (``question=``, ``region_text=``, ``hypothesis=``,
        ``premise=``, a registered task's own)."""
        return self.predict_rows([self.row(image, fields)])[0]

    def logits(self, rows: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        """A NARVL student's scores for rows run as one batch, shape ``(B, N, V + 1)``, on the CPU."""
        if not isinstance(self.model, NARVLStudent):
            raise UserError("logits are defined for a NARVL student (its CTC frames), not for an AR teacher")
        prep = prepare_rows(self.model, list(rows), self.task)
        if prep.bad:
            raise UserError(f"row {prep.bad[0][0]}: {prep.bad[0][1]}")
        return self.model.logits(prep.inputs).float().cpu()
