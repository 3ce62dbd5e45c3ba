"""OFA's image preprocessing: RGB, bicubic square resize to the task resolution, normalise with mean/std 0.5.

This is what OFA's data pipeline does (`Image.convert("RGB")`, torchvision `Resize((s, s), BICUBIC)` on the PIL
image, `ToTensor`, `Normalize(0.5, 0.5)`), written against PIL directly so no torchvision is needed.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image
from transformers.image_processing_base import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

from distill.errors import UserError
from distill.images import ImageSource, load_image, to_rgb

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


class OFAImageProcessor(BaseImageProcessor):
    """OFA / NARVL image processor: `processor(images, return_tensors="pt")["pixel_values"]` is (B, 3, size, size).

    Images may be anything `load_image` accepts. Saved and loaded with `save_pretrained`/`from_pretrained`.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        size: int = 480,
        mean: float | Sequence[float] = 0.5,
        std: float | Sequence[float] = 0.5,
        resample: str = "bicubic",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if isinstance(size, dict):  # tolerate transformers' {"height", "width"} style for a square size
            size = size.get("height", size.get("shortest_edge"))
        if resample not in _RESAMPLE:
            raise UserError(f"resample must be one of {sorted(_RESAMPLE)}, got {resample!r}")
        self.size = int(size)
        """Square side in pixels after resizing (OFA: 480 caption/VQA/SNLI-VE, 512 RefCOCO)."""
        self.mean = [float(m) for m in mean] if isinstance(mean, (list, tuple)) else float(mean)
        """Per-channel (or shared) mean subtracted after scaling to [0, 1]."""
        self.std = [float(s) for s in std] if isinstance(std, (list, tuple)) else float(std)
        """Per-channel (or shared) std divided by after the mean."""
        self.resample = resample
        """PIL resampling filter name for the square resize."""

    def process_image(self, image: ImageSource, size: int | None = None) -> np.ndarray:
        """One image -> (3, size, size) float32 array, normalised."""
        size = int(size or self.size)
        img = to_rgb(load_image(image))
        img = img.resize((size, size), resample=_RESAMPLE[self.resample])
        arr = np.asarray(img, dtype=np.float32) / 255.0
        mean = np.asarray(self.mean, dtype=np.float32).reshape(-1)
        std = np.asarray(self.std, dtype=np.float32).reshape(-1)
        arr = (arr - mean) / std
        return arr.transpose(2, 0, 1).copy()

    def preprocess(
        self,
        images: ImageSource | Sequence[ImageSource],
        return_tensors: str | None = "pt",
        size: int | None = None,
        **_: Any,
    ) -> BatchFeature:
        """Batch of images -> `{"pixel_values": (B, 3, size, size)}`; a single image gives B = 1."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        side = int(size or self.size)
        arrays = [self.process_image(img, size=side) for img in images]
        pixels = np.stack(arrays) if arrays else np.zeros((0, 3, side, side), np.float32)
        return BatchFeature(data={"pixel_values": pixels}, tensor_type=return_tensors)

    def __call__(self, images: ImageSource | Sequence[ImageSource], **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, **kwargs)
