"""Teachers behind one seam (`distill.teachers.base.Teacher`): `load_teacher(folder, ident, config, device)` picks the
implementation from the folder's `config.json` `model_type`: `ofa` -> `OFATeacher`, anything else -> `HFTeacher`
(any transformers image-text model with its `AutoProcessor`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from distill.errors import UserError
from distill.teachers.base import Prediction, Teacher, TeacherIdentity, tokenizer_sha256
from distill.teachers.ofa import OFATeacher


NOT_TEACHERS = {"narvl": "NARVL student"}
"""Model types narvl-pipe writes that cannot teach (a NARVL student decodes in one pass, it does not generate)."""


def model_type(folder: Path) -> str:
    """The `model_type` of a model folder's `config.json` (a UserError names a missing or unreadable one)."""
    f = Path(folder) / "config.json"
    try:
        kind = json.loads(f.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError) as exc:
        raise UserError(f"teacher {folder}: cannot read config.json ({exc})") from exc
    if not kind:
        raise UserError(f"teacher {folder}: config.json names no model_type")
    return str(kind)


def load_teacher(folder: Path, ident: Mapping[str, Any], config: Any, device: Any,
                 default_resolution: int | None = None) -> Teacher:
    """The teacher of `folder` (resolved by `distill.teacher_source.resolve_teacher`; `ident` is its source
    identity). Reads its config, tokenizer and processor only: the weights load at `Teacher.load()`.
    `default_resolution` (the task's) applies to a teacher whose folder records none (OFA)."""
    kind = model_type(folder)
    if kind in NOT_TEACHERS:
        raise UserError(f"teacher {folder} is a {NOT_TEACHERS[kind]} (model_type {kind}): a teacher is an "
                        "autoregressive model (OFA, or a transformers image-text model)")
    if kind == "ofa":
        return OFATeacher.from_pretrained(folder, ident, config, device, default_resolution)
    try:  # written separately (any transformers image-text family); imported only when such a teacher is asked for
        from distill.teachers.hf import HFTeacher
    except ImportError:
        raise UserError(f"teacher family {kind!r} is not supported (only OFA teachers are, in this version)") from None
    return HFTeacher.from_pretrained(folder, ident, config=config, device=device)


__all__ = ["Prediction", "Teacher", "TeacherIdentity", "tokenizer_sha256", "OFATeacher", "load_teacher",
           "model_type"]
