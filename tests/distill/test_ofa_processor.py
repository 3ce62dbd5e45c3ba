"""OFAProcessor: one object for tokenizer + image processor, saved in model folders and opened by AutoProcessor."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor

from distill.ofa import OFAModel, OFAProcessor
from distill.ofa.image_processing_ofa import OFAImageProcessor
from distill.ofa.processing_ofa import load_ofa_processor
from distill.ofa.tokenization_ofa import load_ofa_tokenizer
from student.model_folder import save_model_folder
from tests.distill.distill_helpers import make_teacher


def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((20, 30), (41, 17))]


def test_processor_equals_its_parts(tmp_path):
    folder = make_teacher(tmp_path / "t", resolution=32)
    tok, proc = load_ofa_tokenizer(folder), OFAImageProcessor.from_pretrained(str(folder))
    prompts = [" what does the image describe?", " which region does the text \" red \" describe?"]
    out = OFAProcessor(proc, tok)(text=prompts, images=_images())
    want_ids = tok(prompts, return_tensors="pt", padding=True)["input_ids"]
    assert torch.equal(out["input_ids"], want_ids)
    assert torch.equal(out["patch_images"], proc(_images(), return_tensors="pt")["pixel_values"])
    assert out["patch_images"].shape == (2, 3, 32, 32)
    assert OFAProcessor(proc, tok)(images=_images(), size=48)["patch_images"].shape == (2, 3, 48, 48)


def test_saved_folder_opens_with_auto_classes_without_remote_code(tmp_path):
    teacher = make_teacher(tmp_path / "t", resolution=32)
    model = OFAModel.from_pretrained(str(teacher))
    processor = OFAProcessor(OFAImageProcessor(size=40), load_ofa_tokenizer(teacher))
    folder = save_model_folder(model, processor, tmp_path / "m")
    processor = AutoProcessor.from_pretrained(str(folder))
    assert isinstance(processor, OFAProcessor) and processor.image_processor.size == 40
    assert len(processor.tokenizer) == model.config.vocab_size
    loaded = AutoModel.from_pretrained(str(folder))
    assert isinstance(loaded, OFAModel)
    inputs = processor(text=[" what does the image describe?"] * 2, images=_images())
    with torch.no_grad():
        a = loaded(input_ids=inputs["input_ids"], patch_images=inputs["patch_images"],
                   decoder_input_ids=torch.zeros(2, 1, dtype=torch.long)).logits
        b = model(input_ids=inputs["input_ids"], patch_images=inputs["patch_images"],
                  decoder_input_ids=torch.zeros(2, 1, dtype=torch.long)).logits
    assert torch.equal(a, b)


def test_load_ofa_processor_reads_a_folder_without_processor_config(tmp_path):
    """A folder with only `preprocessor_config.json` (as older narvl-pipe folders) keeps its side; one without an
    image processor (OFA-Sys Hub checkpoints) gets the side asked for; `tokenizer` replaces the folder's."""
    folder = make_teacher(tmp_path / "t", resolution=32)
    assert not (folder / "processor_config.json").exists()
    processor = load_ofa_processor(folder, size=64)
    assert isinstance(processor, OFAProcessor) and processor.image_processor.size == 32
    assert processor.tokenizer.get_vocab() == load_ofa_tokenizer(folder).get_vocab()
    (folder / "preprocessor_config.json").unlink()
    tok = load_ofa_tokenizer(folder)
    fallback = load_ofa_processor(folder, size=64, tokenizer=tok)
    assert fallback.image_processor.size == 64 and fallback.tokenizer is tok
