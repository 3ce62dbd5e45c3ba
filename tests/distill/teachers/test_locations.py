"""Location formats -> original pixels, against the families' official code (Florence-2's post-processor in
transformers) and the documented formulas (PaliGemma 1024 bins y-first, Qwen2-VL 0..1000 grid, Qwen2.5-VL pixels of
the resized input)."""
from __future__ import annotations

import json

import pytest
import torch

from distill.teachers import locations as loc

W, H = 640, 360  # non-square: a swapped axis lands visibly elsewhere


def test_florence2_matches_the_official_post_processor(fixtures_dir):
    """Our decoding is Florence2PostProcessor.dequantize before its int() cast; encoding is its quantize."""
    from transformers.models.florence2.processing_florence2 import Florence2PostProcessor

    from distill.ofa.tokenization_ofa import load_ofa_tokenizer

    tok = load_ofa_tokenizer(fixtures_dir / "ofa-tokenizer", num_codes=0, num_bins=0)  # BART BPE, as Florence-2's
    official = Florence2PostProcessor(config={}, tokenizer=tok)
    bins = [[0, 999, 500, 1], [123, 456, 789, 321]]
    for b in bins:
        ours = loc.FLORENCE2.bins_to_box(b, W, H)
        theirs = official.dequantize(torch.tensor([b]), size=(W, H))[0].tolist()
        assert [int(v) for v in ours] == theirs
    box = [10.0, 20.5, 600.0, 359.0]
    assert loc.FLORENCE2.box_to_bins(box, W, H) == official.quantize(torch.tensor([box]), size=(W, H))[0].tolist()


def test_florence2_parse_is_x_first_and_takes_every_box():
    text = "the red circle<loc_100><loc_200><loc_300><loc_400>sky<loc_0><loc_0><loc_999><loc_999>"
    boxes = loc.FLORENCE2.parse(text, W, H)
    assert len(boxes) == 2
    assert boxes[0] == pytest.approx([100.5 / 1000 * W, 200.5 / 1000 * H, 300.5 / 1000 * W, 400.5 / 1000 * H])
    assert loc.FLORENCE2.parse("no box <loc_1><loc_2>", W, H) == []


def test_paligemma_is_y_first_and_divided_by_1023_as_big_vision():
    """big_vision decodes PaliGemma's location tokens as `k / 1023` of the image side, y first:
    google-research/big_vision `big_vision/evaluators/proj/paligemma/transfers/segmentation.py` line 102
    `bbox = tokens[:, :4] / 1023  # Back to [0.0 ... 1.0]`, line 110 `y1, x1, y2, x2 = bb`, line 119
    `(y1 * h, x1 * w, y2 * h, x2 * w)`. So `<loc1023>` is the far edge (the old `/ 1024` fell one token short)."""
    text = "<loc0100><loc0200><loc0900><loc1023> red circle ; <loc0000><loc0000><loc1023><loc1023>"
    parsed = loc.PALIGEMMA.parse(text, W, H)
    bb = [[100, 200, 900, 1023], [0, 0, 1023, 1023]]
    for got, (y1, x1, y2, x2) in zip(parsed, bb):  # big_vision's formula, written out
        assert got == pytest.approx([x1 / 1023 * W, y1 / 1023 * H, x2 / 1023 * W, y2 / 1023 * H])
    assert parsed[1] == pytest.approx([0.0, 0.0, W, H])
    box = [64.0, 36.0, 320.0, 180.0]  # x0 y0 x1 y1; encoding is the inverse: the nearest token, y first
    y0, x0, y1, x1 = (round(box[i] / s * 1023) for i, s in ((1, H), (0, W), (3, H), (2, W)))
    assert loc.PALIGEMMA.box_to_text(box, W, H) == f"<loc{y0:04d}><loc{x0:04d}><loc{y1:04d}><loc{x1:04d}>"
    for got, want, size in zip(loc.PALIGEMMA.parse(loc.PALIGEMMA.box_to_text(box, W, H), W, H)[0], box,
                               (W, H, W, H)):
        assert abs(got - want) <= size / 1023 / 2 + 1e-9  # round trip within half a token


def test_bins_clamp_outside_the_image():
    assert loc.FLORENCE2.box_to_bins([-5, -5, W + 5, H + 5], W, H) == [0, 0, 999, 999]
    assert loc.PALIGEMMA.box_to_bins([-5, -5, W + 5, H + 5], W, H) == [0, 0, 1023, 1023]


def test_qwen2_vl_grid_of_1000():
    text = "<|object_ref_start|>the dog<|object_ref_end|><|box_start|>(100,250),(500, 750)<|box_end|>"
    assert loc.parse_qwen2_vl(text, W, H) == [pytest.approx([0.1 * W, 0.25 * H, 0.5 * W, 0.75 * H])]
    assert loc.parse_qwen2_vl("(1,2),(3,4)", W, H) == []


def test_qwen2_5_vl_pixels_of_the_resized_input():
    resized = (644, 364)  # what smart_resize makes of 640x360 (multiples of 28)
    sx, sy = W / resized[0], H / resized[1]
    answer = "```json\n" + json.dumps([{"bbox_2d": [10, 20, 300, 200], "label": "dog"}]) + "\n```"
    assert loc.parse_qwen2_5_vl(answer, W, H, resized) == [pytest.approx([10 * sx, 20 * sy, 300 * sx, 200 * sy])]
    assert loc.parse_qwen2_5_vl("the box is [1, 2, 3, 4].", W, H, resized) == [
        pytest.approx([1 * sx, 2 * sy, 3 * sx, 4 * sy])]
    assert loc.parse_qwen2_5_vl("nothing here", W, H, resized) == []


def test_qwen2_5_vl_boxes_through_its_real_image_processor():
    """The resized size comes from the processor's `image_grid_thw` (patches): it is transformers' `smart_resize`
    of the original, and a box in those pixels maps back onto the original image. (Qwen's full processor needs
    torchvision for its video half, so only its image processor runs here.)"""
    from types import SimpleNamespace

    from PIL import Image
    from transformers import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    from distill.teachers.hf_inputs import HFInputs

    images = Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64)
    originals = [Image.new("RGB", (W, H)), Image.new("RGB", (200, 500))]
    enc = images(originals, return_tensors="pt")
    inputs = HFInputs(SimpleNamespace(image_processor=images), family=None, template=None, encoder_decoder=False,
                      decoder_prefix=[], eos_id=0)
    resized = inputs._resized(enc, len(originals))
    for (w, h), got in zip([im.size for im in originals], resized):
        rh, rw = smart_resize(h, w, factor=28, min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64)
        assert got == (rw, rh) and got != (w, h)
        box = loc.parse_qwen2_5_vl('{"bbox_2d": [0, 0, %d, %d]}' % got, w, h, got)[0]
        assert box == pytest.approx([0, 0, w, h])  # the resized image's far corner is the original's
