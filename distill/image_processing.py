"""OFA's image preprocessing: RGB, bicubic square resize to the task resolution, normalise with mean/std 0.5.

This is what OFA's data pipeline does (`Image.convert("RGB")`, torchvision `Resize((s, s), BICUBIC)` on the PIL
image, `ToTensor`, `Normalize(0.5, 0.5)`), written against PIL directly so no torchvision is needed.

Every image is read through `load_image`, which applies the EXIF orientation (as `datasets.Image` and image viewers
do): the teacher, the student's training batches, evaluate and predict all see the same upright pixels.
"""
from __future__ import annotations

import base64
import binascii
import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from transformers.image_processing_base import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

from distill.errors import UserError

ImageSource = Any  # path | bytes | base64 str | {"bytes": .., "path": ..} | PIL.Image.Image

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}
# Modes holding more than 8 bits per sample: PIL's convert("RGB") would clip them at 255, so rescale first.
_URLSAFE = str.maketrans("-_", "+/")
# Everything PIL raises for a file it cannot open or decode (truncation is an OSError).
_DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)
_WIDE_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
# EXIF orientations 5-8 store the image turned by 90 degrees: width and height swap once it is upright.
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}


class ImageLoadError(UserError):
    """An image could not be read: missing, truncated or undecodable. The message names the file."""


def _decode_error(label: str, exc: BaseException) -> ImageLoadError:
    # PIL names an unknown format by the repr of the file object (`<_io.BytesIO object at 0x...>`): a memory
    # address would make the same bad row give a different reason on every run.
    why = "unknown image format" if isinstance(exc, UnidentifiedImageError) else str(exc)
    return ImageLoadError(f"cannot decode image {label}: {why}")


def _open(src: ImageSource, name: str | None) -> tuple[Image.Image, str]:
    if isinstance(src, Image.Image):
        return src, name or "<PIL image>"
    if isinstance(src, dict):  # datasets.Image() storage: bytes win over path, as in datasets.
        data, path = src.get("bytes"), src.get("path")
        if data is not None:
            return _open(bytes(data), name or path or "<bytes>")
        if path:
            return _open(path, name or path)
        raise ImageLoadError(f"image {name or '<dict>'} has neither bytes nor path")
    if isinstance(src, (bytes, bytearray, memoryview)):
        label = name or "<bytes>"
        try:
            return Image.open(io.BytesIO(bytes(src))), label
        except _DECODE_ERRORS as exc:
            raise _decode_error(label, exc) from exc
    if isinstance(src, (str, os.PathLike)):
        text = os.fspath(src)
        if os.path.isdir(text):
            raise ImageLoadError(f"image {name or text} is a folder, not an image file")
        if os.path.isfile(text):
            label = name or text
            try:
                return Image.open(text), label
            except _DECODE_ERRORS as exc:
                raise _decode_error(label, exc) from exc
        decoded = _maybe_base64(text)
        if decoded is not None:  # OFA's TSV files store images as base64 strings
            return _open(decoded, name or "<base64 image>")
        raise ImageLoadError(f"image file not found: {name or text}")
    raise ImageLoadError(f"unsupported image type {type(src).__name__} for {name or 'image'}")


def _maybe_base64(text: str) -> bytes | None:
    if len(text) < 64 or Path(text).suffix:
        return None  # too short to be an encoded image, or a path with an extension
    try:  # OFA writes its TSVs with urlsafe_b64encode: map "-_" back so both alphabets decode
        return base64.b64decode(text.strip().translate(_URLSAFE), validate=True)
    except (binascii.Error, ValueError):
        return None


def _orientation(img: Image.Image) -> int | None:
    try:
        return img.getexif().get(ExifTags.Base.Orientation)
    except _DECODE_ERRORS:  # an unreadable EXIF block: keep the pixels as stored
        return None


def load_image(src: ImageSource, name: str | None = None) -> Image.Image:
    """Decode `src` fully into an upright PIL image (EXIF orientation applied, mode unchanged). `name` labels errors.

    Accepts a path, raw bytes, a base64 string (OFA TSV), a datasets `{"bytes", "path"}` dict, or a PIL image.
    The orientation is applied as `datasets.Image` decodes (`ImageOps.exif_transpose`, which also drops the tag, so
    an image already made upright comes back unchanged). Raises `ImageLoadError` naming the file for a missing,
    truncated or undecodable image: the full decode (`img.load()`) is forced here so truncation surfaces now, not
    inside a model batch.
    """
    img, label = _open(src, name)
    try:
        img.load()
        if _orientation(img) not in (None, 1):
            img = ImageOps.exif_transpose(img)
    except _DECODE_ERRORS as exc:
        raise _decode_error(label, exc) from exc
    return img


def image_size(src: ImageSource, name: str | None = None) -> tuple[int, int]:
    """(width, height) of the upright image (as `load_image` returns it), reading only the header of a file/bytes."""
    img, _ = _open(src, name)
    w, h = img.size
    if _orientation(img) in _TRANSPOSED_ORIENTATIONS:
        w, h = h, w
    if img is not src:  # opened here: release the file handle now rather than at garbage collection
        img.close()
    return w, h


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB version of any PIL mode (L, P, RGBA, CMYK, 16-bit, float). Alpha is dropped, as OFA's convert("RGB") does."""
    if img.mode == "RGB":
        return img
    if img.mode in _WIDE_MODES:
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            scale = 255.0 if arr.size and arr.max() <= 1.0 else 1.0
        else:  # 16-bit (or 32-bit int holding 16-bit data): 65535 -> 255
            scale = 255.0 / 65535.0
        arr = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    return img.convert("RGB")


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
