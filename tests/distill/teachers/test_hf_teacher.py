"""`HFTeacher` on real tiny transformers models (Florence-2, PaliGemma, GIT, LLaVA) built offline and reloaded
through the Auto classes: prepare + infer per task, scores against an unbatched forward, known boxes through
`generate()`."""
from __future__ import annotations

import math
import pickle
import shutil
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))  # the suite runs with --import-mode=importlib
import tiny_hf  # noqa: E402

from distill.config import DistillConfig  # noqa: E402
from distill.errors import UserError  # noqa: E402
from distill.tasks import get_task  # noqa: E402
from distill.prediction import tokenizer_sha256  # noqa: E402
from distill.teachers.hf import HFTeacher  # noqa: E402

FAMILIES = ("florence2", "paligemma", "git", "llava")
ROWS = [
    dict(id="a", captions=["a red circle"], question="what color is the circle", answers=["red"] * 10,
         region_text="the red circle", box=[4.0, 2.0, 30.0, 20.0], premise="", hypothesis="there is a red circle",
         label="entailment"),
    dict(id="b", captions=["a blue square"], question="how many shapes are there in this image", answers=["one"] * 10,
         region_text="the blue square", box=[3.0, 4.0, 30.0, 50.0], premise="one shape",
         hypothesis="there is a blue square", label="neutral"),
]
# Non-square originals (one landscape, one portrait): a box mapped through the wrong axis lands elsewhere.
IMAGES = [Image.new("RGB", (48, 32), (220, 40, 40)), Image.new("RGB", (32, 64), (40, 80, 220))]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {name: tiny_hf.BUILDERS[name](root / name) for name in FAMILIES}


def _load(folder, **config) -> HFTeacher:
    cfg = DistillConfig(task="caption", teacher=str(folder), data="unused", out="unused", **config)
    return HFTeacher.from_pretrained(folder, {"id": str(folder), "sha256": "test"}, cfg, torch.device("cpu"))


@pytest.fixture(scope="module")
def teachers(folders):
    loaded = {name: _load(folder) for name, folder in folders.items()}
    for teacher in loaded.values():
        teacher.load()
    return loaded


def _reference_logprob(teacher: HFTeacher, image, prompt: str, ids: list[int]) -> float:
    """log p(ids | image, prompt) from ONE unpadded sequence through the model's plain forward."""
    enc = teacher._to_device(teacher.inputs._encode([image], [prompt]))
    model, tail = teacher.model, torch.tensor([ids])
    with torch.no_grad():
        if teacher.encoder_decoder:
            dec = torch.cat([torch.tensor([teacher.inputs.decoder_prefix]), tail], dim=1)
            logits = model(**enc, decoder_input_ids=dec).logits[0, -len(ids) - 1: -1]
        else:  # logits of the last len(ids) + 1 positions (GIT's logits also cover its image tokens, first)
            enc["input_ids"] = torch.cat([enc["input_ids"], tail], dim=1)
            enc["attention_mask"] = torch.ones_like(enc["input_ids"])
            if "token_type_ids" in enc:
                enc["token_type_ids"] = torch.cat([enc["token_type_ids"], torch.ones_like(tail)], dim=1)
            logits = model(**enc).logits[0, -len(ids) - 1: -1]
    return float(torch.log_softmax(logits.float(), -1).gather(-1, tail[0].unsqueeze(-1)).sum())


@pytest.mark.parametrize("family", FAMILIES)
def test_identity_records_family_tokenizer_and_template(folders, teachers, family):
    from transformers import AutoProcessor

    ident = teachers[family].identity
    assert ident.family == family
    assert ident.tokenizer_sha256 == tokenizer_sha256(AutoProcessor.from_pretrained(str(folders[family])).tokenizer)
    assert len({t.identity.tokenizer_sha256 for t in teachers.values()}) == len(FAMILIES)
    grown = AutoProcessor.from_pretrained(str(folders[family])).tokenizer
    grown.add_tokens(["<one_more>"])  # one added token is another vocabulary
    assert tokenizer_sha256(grown) != ident.tokenizer_sha256
    custom = _load(folders[family], prompt_template="Q: {question} A:")
    assert custom.identity.extra["prompt_template"] == "Q: {question} A:"
    assert custom.prepare(ROWS, IMAGES, get_task("vqa"))["prompts"] == [f"Q: {r['question']} A:" for r in ROWS]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("task_name", ["caption", "vqa"])
def test_text_tasks_give_n_best_predictions_scored_as_the_model_does(teachers, family, task_name):
    teacher, task = teachers[family], get_task(task_name)
    inputs = teacher.prepare(ROWS, IMAGES, task)
    tok = teacher.processor.tokenizer
    nbest = teacher.infer(inputs, task, {"num_beams": 3, "num_return_sequences": 2, "max_new_tokens": 5})
    assert [len(b) for b in nbest] == [2, 2]
    for best in nbest:
        assert best[0].logprob >= best[1].logprob
        for p in best:
            assert p.ids[-1] == teacher.inputs.eos_id and 1 <= len(p.ids) <= 6
            assert p.text == tok.decode(p.ids[:-1], skip_special_tokens=True).strip()
            assert p.box is None and p.label is None
    # greedy: each prediction's log-prob is what one unbatched, unpadded forward gives its ids
    greedy = teacher.infer(inputs, task, {"num_beams": 1, "max_new_tokens": 5})
    for (pred,), image, prompt in zip(greedy, IMAGES, inputs["prompts"]):
        scored = pred.ids if len(pred.ids) <= 5 else pred.ids[:5]  # the EOS was appended, not generated
        assert pred.logprob == pytest.approx(_reference_logprob(teacher, image, prompt, scored), abs=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_entailment_is_a_choice_scored_by_teacher_forcing(teachers, family):
    teacher, task = teachers[family], get_task("entailment")
    inputs = teacher.prepare(ROWS, IMAGES, task)
    nbest = teacher.infer(inputs, task, {"num_return_sequences": 3})
    tok = teacher.processor.tokenizer
    for best, image, prompt in zip(nbest, IMAGES, inputs["prompts"]):
        assert sorted(p.label for p in best) == sorted(task.candidates)
        assert [p.logprob for p in best] == sorted((p.logprob for p in best), reverse=True)
        for p in best:  # batched + padded scoring == one unpadded sequence per candidate
            assert p.text == p.label and p.ids == tok(p.label, add_special_tokens=False)["input_ids"] + [p.ids[-1]]
            assert p.logprob == pytest.approx(_reference_logprob(teacher, image, prompt, p.ids), abs=1e-3)
    assert teacher.infer(inputs, task, {})[0][0].label == nbest[0][0].label


@pytest.mark.parametrize("family", ["florence2", "paligemma"])
def test_grounding_predictions_carry_a_box_or_none(teachers, family):
    teacher, task = teachers[family], get_task("grounding")
    inputs = teacher.prepare(ROWS, IMAGES, task)
    assert inputs["prompts"][0].endswith("the red circle")
    settings = teacher.settings(task)
    assert settings["max_new_tokens"] > 4 and "prefix_allowed_tokens_fn" not in settings  # not OFA's 4 bins
    for (pred,), (w, h) in zip(teacher.infer(inputs, task, settings), [im.size for im in IMAGES]):
        if pred.box is not None:  # a random model may or may not write 4 location tokens in a row
            assert len(pred.box) == 4 and all(0 <= v <= s for v, s in zip(pred.box, (w, h, w, h)))


def test_a_family_without_a_box_format_refuses_grounding_in_one_line(teachers):
    with pytest.raises(UserError, match="llava has no location format.*florence2, paligemma"):
        teachers["llava"].check_task(get_task("grounding"))


KNOWN = {0: [6.0, 3.0, 40.0, 29.0], 1: [2.0, 10.0, 27.0, 61.0]}  # x0 y0 x1 y1 in each image's original pixels


@pytest.mark.parametrize("family", ["florence2", "paligemma"])
@pytest.mark.parametrize("index", [0, 1])
def test_a_known_box_comes_back_in_original_pixels_through_generate(folders, tmp_path, family, index):
    """The teacher is made to write the location tokens of a known box (a generation-config `sequence_bias`:
    generate() itself picks them); the Prediction's box is that box in the original, non-square image."""
    image = IMAGES[index]
    w, h = image.size
    x0, y0, x1, y1 = KNOWN[index]
    if family == "florence2":  # 1000 bins, x first, decoded at the bin centre
        bins = [math.floor(v / s * 1000) for v, s in ((x0, w), (y0, h), (x1, w), (y1, h))]
        tokens, tolerance = [f"<loc_{k}>" for k in bins], [w / 1000, h / 1000] * 2
        after = None  # the decoder start token
    else:  # 1024 tokens, y first, k / 1023 of the side (big_vision)
        bins = [round(v / s * 1023) for v, s in ((y0, h), (x0, w), (y1, h), (x1, w))]
        tokens, tolerance = [f"<loc{k:04d}>" for k in bins], [w / 1023 / 2, h / 1023 / 2] * 2
        after = "Ċ"  # the prompt's closing "\n" (byte-level BPE)
    folder = shutil.copytree(folders[family], tmp_path / family)
    tiny_hf.force_sequence(folder, tokens, after=after)
    teacher, task = _load(folder), get_task("grounding")
    settings = teacher.settings(task)
    pred = teacher.infer(teacher.prepare([ROWS[index]], [image], task), task, settings)[0][0]
    assert "".join(tokens) in pred.text
    assert pred.box is not None
    for got, want, tol in zip(pred.box, KNOWN[index], tolerance):
        assert abs(got - want) <= tol


def test_the_teacher_pickles_without_its_weights(teachers):
    """prepare runs in DataLoader workers: the teacher must travel without the model."""
    teacher, task = teachers["paligemma"], get_task("vqa")
    clone = pickle.loads(pickle.dumps(teacher))
    assert teacher.model is not None and clone.model is None
    a, b = teacher.prepare(ROWS, IMAGES, task), clone.prepare(ROWS, IMAGES, task)
    assert all(torch.equal(a["model_inputs"][k], b["model_inputs"][k]) for k in a["model_inputs"])
