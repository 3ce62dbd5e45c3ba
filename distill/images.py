"""Image loading shared by every stage and every teacher: one `load_image` for paths, bytes, base64 and PIL images.

Every image is read through `load_image`, which applies the EXIF orientation (as `datasets.Image` and image viewers
do): the teacher, the student's training batches, evaluate and predict all see the same upright pixels.
"""
from __future__ import annotations

import base64
import binascii
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from distill.errors import UserError

ImageSource = Any  # path | bytes | base64 str | {"bytes": .., "path": ..} | PIL.Image.Image

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
        if "://" in text:  # a remote image is never fetched here (one slow host would stall the whole run)
            raise ImageLoadError(
                f"image {name or text} is a URL: narvl-pipe does not download images; fetch them first into "
                "webdataset tar shards (img2dataset --output_format webdataset) and distil those")
        decoded = _maybe_base64(text)
        if decoded is not None:  # OFA's TSV files store images as base64 strings
            return _open(decoded, name or "<base64 image>")
        raise ImageLoadError(f"image file not found: {name or text}")
    raise ImageLoadError(f"unsupported image type {type(src).__name__} for {name or 'image'}")


def resolve_image_path(path: str | None, root: str | os.PathLike) -> str | None:
    """A source's image path made absolute against `root` (its folder or `image_root`); an absolute path or a URL
    (`http://...`, kept as it is and quarantined by `load_image` with the reason) is returned unchanged."""
    if path is None or os.path.isabs(path) or "://" in path:
        return path
    return str(Path(root) / path)


def decode_base64(text: str) -> bytes | None:
    """Bytes of a base64 string, or None when it is not valid base64. Both alphabets (OFA writes its TSVs with
    `urlsafe_b64encode`), line breaks and a `data:...;base64,` prefix are accepted."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode("".join(text.split()).translate(_URLSAFE), validate=True)
    except (binascii.Error, ValueError):
        return None


def _maybe_base64(text: str) -> bytes | None:
    if len(text) < 64 or Path(text).suffix:
        return None  # too short to be an encoded image, or a path with an extension
    return decode_base64(text)


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


def row_image_size(row: Any) -> tuple[int, int]:
    """(width, height) of a canonical row's original image: its `width`/`height` columns if present, else the image
    header (`image_size`)."""
    if row.get("width") and row.get("height"):
        return int(row["width"]), int(row["height"])
    return image_size(row["image"], name=str(row.get("id", "image")))


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
