"""One loader for every model behind the seam (`distill.seam.Model`): `load_model(folder or Hub id, ...)`.

It dispatches on the folder's `config.json` `model_type`: `ofa` -> `OFATeacher`, a registered type -> its opener
(importing `student` registers `narvl`: the NARVL student, or its ONNX export), anything else -> `HFTeacher` (any
transformers image-text model with its `AutoProcessor`). Opening reads the config, tokenizer and processor only;
the weights load at `Model.load()`, so a bad input fails before any weight is read.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from distill.errors import UserError
from distill.hub_ids import resolve_model_folder
from distill.seam import Model, ModelOptions
from distill.teachers.hf import HFTeacher
from distill.teachers.ofa import OFATeacher

Opener = Callable[[Path, Mapping[str, Any], ModelOptions, torch.device, Any], Model]
"""(folder, source identity, options, device, task or None) -> a `Model` (weights not loaded)."""

OPENERS: dict[str, Opener] = {"ofa": OFATeacher.from_pretrained}
"""`model_type` -> opener; any other type opens as a transformers model (`HFTeacher`)."""


def register_model_type(model_type: str, opener: Opener) -> None:
    """Open folders of `model_type` with `opener` (replaces an earlier registration)."""
    OPENERS[model_type] = opener


def model_type(folder: str | os.PathLike) -> str:
    """The `model_type` of a model folder's `config.json` (a UserError names a missing or unreadable one)."""
    f = Path(folder) / "config.json"
    try:
        kind = json.loads(f.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder}: cannot read config.json ({exc})") from exc
    if not kind:
        raise UserError(f"{folder}: config.json names no model_type")
    return str(kind)


def default_device() -> torch.device:
    """CUDA when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def open_model(folder: str | os.PathLike, ident: Mapping[str, Any], *, task: Any = None,
               options: ModelOptions | None = None, device: str | torch.device | None = None) -> Model:
    """The model of a resolved `folder` (`ident`: its source record). With `task`, checks that the model can infer
    it (`Model.check_task`); OFA folders without an image processor (OFA-Sys's) take the task's resolution."""
    options = options or ModelOptions()
    options.check_choices()
    opener = OPENERS.get(model_type(folder), HFTeacher.from_pretrained)
    model = opener(Path(folder), dict(ident), options, torch.device(device) if device else default_device(), task)
    if task is not None:
        model.check_task(task)
    return model


def load_model(name: str | os.PathLike, *, revision: str | None = None, task: Any = None,
               options: ModelOptions | None = None, device: str | torch.device | None = None,
               field: str = "model") -> Model:
    """`open_model` of a local folder or a Hub id (resolved through the HF cache at `revision`; `field` is the
    setting error messages name)."""
    folder, ident = resolve_model_folder(os.fspath(name), revision, field=field)
    return open_model(folder, ident, task=task, options=options, device=device)
