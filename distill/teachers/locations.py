"""Location formats of teacher families <-> boxes in ORIGINAL image pixels (x0, y0, x1, y1).

Facts (from each family's official processor in transformers 5.24; the code here is ours):
- Florence-2 (`Florence2PostProcessor`): `<loc_k>`, k in 0..999, 1000 bins per axis over the original image, x first
  (`<loc_x0><loc_y0><loc_x1><loc_y1>`); decoded at the bin centre, `(k + 0.5) / 1000 * size` (the official code
  then truncates to int; we keep the float). Encoding is `floor(coord / size * 1000)`, clamped to 0..999.
- PaliGemma (big_vision's detection format, `<loc0000>`..`<loc1023>` added by `PaliGemmaProcessor`): 1024 tokens,
  y first (`<locY0><locX0><locY1><locX1> label`), decoded as big_vision does, `k / 1023 * size`
  (`big_vision/evaluators/proj/paligemma/transfers/segmentation.py`: `bbox = tokens[:, :4] / 1023`, then `y1 * h`):
  token 1023 is the image's far edge. Encoding is its inverse, the nearest token `round(coord / size * 1023)`.
- Qwen2-VL: `<|box_start|>(x0,y0),(x1,y1)<|box_end|>`, integers on a 0..1000 grid of the image: `v / 1000 * size`.
- Qwen2.5-VL: absolute pixels of the image AS RESIZED by its processor (`smart_resize`; the grid is
  `image_grid_thw * patch_size`), written as JSON `"bbox_2d": [x0, y0, x1, y1]` (or a bare 4-number list):
  `v * original / resized` per axis.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Sequence

Box = list[float]


@dataclass(frozen=True)
class BinFormat:
    """Boxes written as 4 location tokens, each a bin index over one image axis."""

    name: str
    """Family the format belongs to (for messages)."""
    token: str
    """Python format of the token for bin `k`, e.g. `"<loc_{k}>"`."""
    pattern: str
    """Regex of one token, its group the bin index."""
    num_bins: int
    """Location tokens per axis."""
    y_first: bool
    """True: tokens read y0 x0 y1 x1 (PaliGemma); False: x0 y0 x1 y1 (Florence-2)."""
    centre: float
    """Added to k before scaling: 0.5 decodes to the bin centre (Florence-2), 0 to k itself (PaliGemma)."""
    divisor: float
    """`(k + centre) / divisor` is the coordinate as a fraction of the image side: 1000 bins (Florence-2), or
    1023, the last token's index (PaliGemma: tokens are points from 0 to the far edge)."""
    nearest: bool = False
    """Encoding rounds to the nearest token (PaliGemma's points) instead of flooring to the bin (Florence-2)."""

    def _order(self, values: Sequence[float]) -> list[float]:
        a, b, c, d = values
        return [b, a, d, c] if self.y_first else [a, b, c, d]

    def bins_to_box(self, bins: Sequence[int], width: float, height: float) -> Box:
        """4 bins in the family's order -> [x0, y0, x1, y1] in original pixels."""
        x0, y0, x1, y1 = self._order([float(k) for k in bins])
        sx, sy = width / self.divisor, height / self.divisor
        return [(x0 + self.centre) * sx, (y0 + self.centre) * sy, (x1 + self.centre) * sx, (y1 + self.centre) * sy]

    def box_to_bins(self, box: Sequence[float], width: float, height: float) -> list[int]:
        """[x0, y0, x1, y1] in original pixels -> 4 bins in the family's order (floor or nearest, clamped)."""
        x0, y0, x1, y1 = box
        top = self.num_bins - 1
        to_bin = round if self.nearest else math.floor
        q = [min(max(to_bin(v / s * self.divisor), 0), top)
             for v, s in ((x0, width), (y0, height), (x1, width), (y1, height))]
        return [int(k) for k in self._order(q)]  # the swap is its own inverse

    def box_to_text(self, box: Sequence[float], width: float, height: float) -> str:
        """The 4 location tokens of a box (what the family would write)."""
        return "".join(self.token.format(k=k) for k in self.box_to_bins(box, width, height))

    def __call__(self, text: str, width: float, height: float, resized=None) -> list[Box]:
        """`parse` with the family box-parser signature (the resized size does not matter: bins are relative)."""
        return self.parse(text, width, height)

    def parse(self, text: str, width: float, height: float) -> list[Box]:
        """Every run of 4 consecutive location tokens in `text`, as boxes in original pixels (first = best)."""
        four = self.pattern * 4
        return [self.bins_to_box([int(g) for g in m.groups()], width, height) for m in re.finditer(four, text)]


FLORENCE2 = BinFormat("florence2", "<loc_{k}>", r"<loc_(\d+)>", 1000, y_first=False, centre=0.5, divisor=1000)
PALIGEMMA = BinFormat("paligemma", "<loc{k:04d}>", r"<loc(\d{4})>", 1024, y_first=True, centre=0.0, divisor=1023,
                      nearest=True)

_QWEN2_BOX = re.compile(r"<\|box_start\|>\s*\(\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\)\s*,\s*"
                        r"\(\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\)\s*<\|box_end\|>")
_FOUR_NUMBERS = re.compile(r"\[\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*"
                           r"(-?\d+(?:\.\d+)?)\s*\]")


def parse_qwen2_vl(text: str, width: float, height: float) -> list[Box]:
    """Qwen2-VL boxes `<|box_start|>(x0,y0),(x1,y1)<|box_end|>` on the 0..1000 grid -> original pixels."""
    return [[float(x0) / 1000 * width, float(y0) / 1000 * height, float(x1) / 1000 * width, float(y1) / 1000 * height]
            for x0, y0, x1, y1 in _QWEN2_BOX.findall(text)]


def parse_qwen2_5_vl(text: str, width: float, height: float, resized: tuple[float, float]) -> list[Box]:
    """Qwen2.5-VL boxes in pixels of the resized input (`resized` = (width, height) the processor fed the model):
    JSON objects' `bbox_2d`, else any bare `[x0, y0, x1, y1]` list, scaled back to original pixels."""
    rw, rh = resized
    sx, sy = width / rw, height / rh
    boxes = []
    for item in _json_items(text):
        box = item.get("bbox_2d") if isinstance(item, dict) else None
        if isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box):
            boxes.append([box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy])
    if not boxes:
        boxes = [[float(a) * sx, float(b) * sy, float(c) * sx, float(d) * sy]
                 for a, b, c, d in _FOUR_NUMBERS.findall(text)]
    return boxes


def _json_items(text: str) -> list:
    """The JSON value in `text` (a ```json fence allowed) as a list of items; [] when it is not JSON."""
    body = text.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", body, re.S)
    if fence:
        body = fence.group(1)
    try:
        value = json.loads(body)
    except ValueError:
        return []
    return value if isinstance(value, list) else [value]
