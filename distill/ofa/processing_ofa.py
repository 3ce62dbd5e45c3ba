"""`OFAProcessor`: OFA's tokenizer and image processor as one transformers processor.

`processor(text=prompts, images=images)` gives what `OFAModel` and `NARVLModel` take: `input_ids` (B, L) and
`attention_mask` (B, L) from the tokenizer, `patch_images` (B, 3, S, S) from the image processor. It is saved in
every model folder narvl-pipe writes and loads with `AutoProcessor.from_pretrained(folder)` (no remote code).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .image_processing_ofa import OFAImageProcessor
from .tokenization_ofa import load_ofa_tokenizer


class OFAProcessor(ProcessorMixin):
    """Tokenizer (OFA's BPE with `<code_k>`/`<bin_k>` tokens) + `OFAImageProcessor`."""

    def __init__(self, image_processor=None, tokenizer=None, **kwargs: Any):
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, text: str | Sequence[str] | None = None, images: Any = None, size: int | None = None,
                 return_tensors: str = "pt", **kwargs: Any) -> BatchFeature:
        """Prompts (already in OFA's prompt form, see `Task.prompt`) and/or images -> model inputs.

        `size` overrides the image processor's square side (a task's resolution)."""
        if text is None and images is None:
            raise ValueError("OFAProcessor needs text, images or both")
        data: dict[str, Any] = {}
        if text is not None:
            enc = self.tokenizer(text, return_tensors=return_tensors, padding=True, **kwargs)
            data.update(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        if images is not None:
            data["patch_images"] = self.image_processor(images, return_tensors=return_tensors,
                                                        size=size)["pixel_values"]
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "patch_images"]


def load_ofa_processor(folder: str | os.PathLike, size: int | None = None, tokenizer: Any = None) -> OFAProcessor:
    """The `OFAProcessor` of a model folder: its tokenizer (`load_ofa_tokenizer`; `tokenizer`, a loaded one or
    another folder / Hub id, replaces it) and its `OFAImageProcessor` from `preprocessor_config.json`, which every
    folder narvl-pipe writes holds, older ones without `processor_config.json` included. A folder without one (the
    OFA-Sys Hub checkpoints) gets OFA's preprocessing at `size`."""
    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_ofa_tokenizer(os.fspath(tokenizer if tokenizer is not None else folder))
    if (Path(folder) / "preprocessor_config.json").is_file():
        image_processor = OFAImageProcessor.from_pretrained(os.fspath(folder))
    else:
        image_processor = OFAImageProcessor(size=size)
    return OFAProcessor(image_processor, tokenizer)
