"""What every model returns and how a model's vocabulary is named: the neutral module that tasks, models and
datasets all import (it imports nothing of the project).

- `Prediction`: one of a sample's n best outputs, in canonical form (text, box in original pixels, label) beside the
  model's own ids;
- `ModelIdentity`: what a dataset records about the model that made it (its provenance);
- `tokenizer_sha256`: the hash that says which vocabulary a list of ids is in.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass
class Prediction:
    """One of a sample's n best model outputs, in canonical form."""

    text: str
    """The decoded text, as the model family writes it after its own post-processing (caption, answer, label word;
    for OFA and NARVL grounding the bin tokens `<bin_a><bin_b>...`)."""
    ids: list[int]
    """The model's own token ids after the decoder start token, ending with its EOS (its vocabulary)."""
    logprob: float
    """Summed log-prob of `ids` under the decoding's logits processors (not length-normalised); NARVL: the
    log-prob of its greedy CTC path (argmax of every query)."""
    box: list[float] | None = None
    """Grounding: x0, y0, x1, y1 in original image pixels; None when the output held no parseable box."""
    label: str | None = None
    """Entailment: one of the task's candidates (yes / no / maybe)."""


@dataclass
class ModelIdentity:
    """Who made a prediction: recorded in a distilled dataset (its manifest, parquet metadata and card) and in
    evaluation results."""

    family: str
    """Model family: "ofa", "narvl", "florence2", "paligemma", "git", "qwen2_vl", ... (the config's model_type)."""
    source: Mapping[str, Any]
    """{"id", "revision"} for a Hub id, {"id", "sha256"} for a local folder (`distill.hub_ids.resolve_model_folder`)."""
    tokenizer_sha256: str
    """`tokenizer_sha256` of the model's tokenizer: says which vocabulary its ids are in."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Family-specific settings that change outputs (prompt template, generation config hash, ...)."""

    def record(self) -> dict[str, Any]:
        """The JSON record (a manifest's `teacher_identity`)."""
        return {"family": self.family, "source": dict(self.source), "tokenizer_sha256": self.tokenizer_sha256,
                "extra": dict(self.extra)}


def tokenizer_sha256(tokenizer: Any) -> str:
    """Hash of what maps text to ids: the vocabulary with its ids, the BPE merges / model, the added and special
    tokens. Two tokenizers with one hash give the same ids, so a student whose tokenizer has the teacher's hash
    can learn the teacher's `target_ids` as they are (`student.data.TaskRows`).

    Fast tokenizers hash their `tokenizer.json` form without the call-time truncation/padding state; others hash
    the vocabulary in id order."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
    else:
        spec = {"vocab": sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])}
    spec["special_ids"] = [getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "pad", "unk")]
    return hashlib.sha256(json.dumps(spec, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()
