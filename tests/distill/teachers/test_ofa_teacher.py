"""`OFATeacher` behind the model seam: the decoding it picks from each task's answer space, its settings, and the
same predictions through `distill.loader.load_model` as through the module it wraps."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill_helpers import make_teacher  # noqa: E402

from distill.errors import UserError  # noqa: E402
from distill.loader import load_model  # noqa: E402
from distill.ofa.tokenization_ofa import bin_token_ids  # noqa: E402
from distill.seam import prepare_rows  # noqa: E402
from distill.tasks import get_task  # noqa: E402


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("ofa") / "teacher")


def rows(n: int, **text):
    return [{"id": f"r{i}", "image": Image.new("RGB", (40 + 8 * i, 30), (30 * i, 90, 200)), **text} for i in range(n)]


def test_each_answer_space_decodes_as_ofa(teacher_dir):
    model = load_model(teacher_dir, task=get_task("caption"))
    assert (model.kind, model.autoregressive, model.decodes_over_answer_list) == ("ofa", True, True)
    tok = model.tokenizer
    grounding = get_task("grounding", resolution=32)
    settings = model.settings(grounding)
    prep = prepare_rows(model, rows(3, region_text="the red circle"), grounding)
    for (best,), size in zip(model.infer(prep.inputs, grounding, settings), prep.inputs["orig_sizes"]):
        assert len(best.ids) == 5 and set(best.ids[:4]) <= set(bin_token_ids(tok))  # 4 bins, then EOS
        assert best.box is not None and all(0 <= v <= s for v, s in zip(best.box, size * 2))
    assert model.describe(grounding, settings) == "AR beam 5, 4 bins"

    entailment = get_task("entailment")
    prep = prepare_rows(model, rows(2, hypothesis="a red circle", premise=""), entailment)
    settings = model.settings(entailment, overrides={"num_return_sequences": 3})
    for best in model.infer(prep.inputs, entailment, settings):
        assert sorted(p.label for p in best) == ["maybe", "no", "yes"]  # every candidate scored, best first
        assert [p.logprob for p in best] == sorted((p.logprob for p in best), reverse=True)
    assert model.describe(entailment, settings) == "AR candidate scoring"

    vqa = get_task("vqa")
    with pytest.raises(UserError, match="answers"):
        model.settings(vqa)  # OFA decodes VQA over the user's answer list
    settings = model.settings(vqa, ["red", "blue", "green"], {"vqa_mode": "allcand", "num_return_sequences": 3})
    prep = prepare_rows(model, rows(2, question="what color is the circle", answers=["red"]), vqa)
    assert all(sorted(p.text for p in best) == ["blue", "green", "red"]
               for best in model.infer(prep.inputs, vqa, settings))
    with pytest.raises(UserError, match="vqa_mode"):
        model.settings(get_task("caption"), overrides={"vqa_mode": "allcand"})
    with pytest.raises(UserError, match="num_return_sequences"):
        model.settings(get_task("caption"), overrides={"num_beams": 2, "num_return_sequences": 3})


def test_an_ofa_sys_folder_takes_the_task_resolution(teacher_dir, tmp_path):
    """OFA-Sys checkpoints ship no image processor: the task's resolution applies (`resolution` overrides it)."""
    folder = tmp_path / "ofa-sys"
    folder.mkdir()
    for f in teacher_dir.iterdir():
        if f.name != "preprocessor_config.json":
            (folder / f.name).write_bytes(f.read_bytes())
    task = get_task("caption", resolution=40)
    assert load_model(folder, task=task).resolution == 40
    with pytest.raises(UserError, match="image processor"):
        load_model(folder)
    prep = prepare_rows(load_model(folder, task=task), rows(2), task)
    assert prep.inputs["patch_images"].shape == (2, 3, 40, 40)
    assert torch.equal(prep.inputs["input_ids"][0], prep.inputs["input_ids"][1])
