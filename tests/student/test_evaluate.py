"""`evaluate` / `predict` for any model behind the seam, checked against direct computations: a 3-line greedy CTC
collapse for NARVL, and `OFAModel.generate()` row by row for the AR teacher."""
from __future__ import annotations

import itertools
import json
import shutil
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))  # the suite runs with --import-mode=importlib
import student_helpers as h  # noqa: E402

from distill.errors import UserError  # noqa: E402
from distill.loader import load_model  # noqa: E402
from distill.ofa.fairseq_rules import generate_kwargs  # noqa: E402
from distill.ofa import OFAModel  # noqa: E402
from distill.ofa.processing_ofa import load_ofa_processor  # noqa: E402
from distill.run import DistillConfig, run_distill  # noqa: E402
from distill.seam import prepare_rows  # noqa: E402
from distill.sources import open_source  # noqa: E402
from distill.tasks import get_task  # noqa: E402
from distill.tasks.metrics import caption_metric_implementation, caption_scores  # noqa: E402
from distill.teacher_loop import _Collate  # noqa: E402
from pipelines.cli import main  # noqa: E402
from student.data import TaskRows, load_training_data  # noqa: E402
from student.eval_config import EvalConfig, PredictConfig  # noqa: E402
from student.evaluate import EvalResult, evaluate, predict  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    world = h.make_world(root, n_train=8, n_val=6)
    teacher = h.make_teacher(world, root / "teacher", "caption", 2)
    h.make_student(teacher, root / "student")
    return world, teacher, root / "student"


def ev(model, task, data, **kw) -> EvalResult:
    return evaluate(EvalConfig(model=str(model), task=task, data=str(data), **kw), progress=False)


def pr(model, task, image, **kw):
    return predict(PredictConfig(model=str(model), task=task, image=str(image), **kw))


def _inputs(model, task, row):
    return {k: v for k, v in prepare_rows(model, [row], task).inputs.items() if k != "orig_sizes"}


def test_evaluate_narvl_is_greedy_ctc(models, tmp_path):
    world, _, student = models
    res = ev(student, "caption", world, split="validation", batch_size=4, limit=6, out=str(tmp_path / "p.jsonl"))
    assert isinstance(res, EvalResult) and res.kind == "narvl" and res.num_samples == 6 and res.ms_per_sample > 0
    assert res.decoding == "one pass + CTC"
    lines = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    rows = list(datasets.load_from_disk(str(world))["validation"])[:6]
    assert [x["id"] for x in lines] == [r["id"] for r in rows]
    assert [x["captions"] for x in lines] == [r["captions"] for r in rows]  # the references beside the prediction

    model, task = load_model(student, device="cpu"), get_task("caption")
    model.load()
    blank, eos, pad = model.model.config.blank_id, model.tokenizer.eos_token_id, model.tokenizer.pad_token_id
    expected = []
    for row in rows:  # batch 1, no padding: an independent path through the model
        with torch.no_grad():
            best = model.model(**_inputs(model, task, row)).logits[0].argmax(-1).tolist()
        merged = [k for k, _ in itertools.groupby(best) if k not in (blank, pad)]
        ids = merged[: merged.index(eos)] if eos in merged else merged
        expected.append(task.decode(ids, row, model.tokenizer))
    assert [x["prediction"] for x in lines] == expected == res.predictions
    assert res.metrics == pytest.approx(caption_scores(expected, [r["captions"] for r in rows]))  # pycocoevalcap
    assert res.metric_implementation == caption_metric_implementation() and "pycocoevalcap" in res.line()
    assert res.row_ids == [r["id"] for r in rows] and sum(res.row_scores) / 6 == pytest.approx(res.metrics["cider"])
    assert res.interval["low"] <= res.metrics["cider"] <= res.interval["high"] and "95% CI" in res.line()


def test_evaluate_ar_matches_generate(models):
    world, teacher, _ = models
    res = ev(teacher, "caption", world, split="validation", batch_size=3, limit=3)
    assert res.kind == "ofa" and res.decoding == "AR beam 5"
    model, task = load_model(teacher, task=get_task("caption"), device="cpu"), get_task("caption")
    model.load()
    rows = list(datasets.load_from_disk(str(world))["validation"])[:3]
    expected = []
    for row in rows:
        with torch.no_grad():
            out = model.model.generate(**_inputs(model, task, row),  # OFA's caption flags under fairseq's rules
                                       **generate_kwargs(task.generation, model.tokenizer))
        expected.append(task.decode(out[0, 1:].tolist(), row, model.tokenizer))
    assert res.predictions == expected


def test_other_tasks_and_predict(models, tmp_path):
    world, teacher, student = models
    ent = ev(teacher, "entailment", world, limit=3)  # AR: candidates scored, as OFA does
    assert set(ent.predictions) <= {"yes", "no", "maybe"} and "accuracy" in ent.metrics
    assert ent.metric_implementation.startswith("exact-match accuracy") and ent.decoding == "AR candidate scoring"
    grounding_student = h.make_student(teacher, tmp_path / "grounding", task="grounding", num_queries=5)
    grd = ev(grounding_student, "grounding", world, limit=3)  # a box only from exactly 4 bins
    assert all(p is None or len(p) == 4 for p in grd.predictions) and "acc@0.5" in grd.metrics
    with pytest.raises(UserError, match="trained for task caption, not grounding"):
        ev(student, "grounding", world, limit=3)

    image = tmp_path / "img.png"
    datasets.load_from_disk(str(world))["test"][0]["image"].save(image)
    res = h.cli("predict", "--model", student, "--task", "caption", "--image", image)
    assert res.stdout.strip() == pr(student, "caption", image).prediction
    out = h.cli("predict", "--model", teacher, "--task", "entailment", "--image", image, "--text", "a red circle",
                "--field", "premise=two shapes")
    assert out.stdout.strip() == pr(teacher, "entailment", image, text="a red circle",
                                    fields={"premise": "two shapes"}).prediction
    with pytest.raises(UserError, match="needs the text field 'question'"):
        pr(student, "vqa", image)
    with pytest.raises(UserError, match="reads no field"):
        pr(teacher, "entailment", image, text="a red circle", fields={"question": "what?"})
    with pytest.raises(UserError, match="vqa needs `answers` FILE"):
        pr(teacher, "vqa", image, text="what color is the circle")
    out = h.cli("evaluate", "--model", student, "--task", "caption", "--data", world, "--limit", "2",
                "--out", tmp_path / "e.jsonl")
    assert "cider=" in out.stdout and "ms/sample" in out.stdout and "meteor=" in out.stdout
    assert "metric: pycocoevalcap" in out.stdout
    assert len((tmp_path / "e.jsonl").read_text().splitlines()) == 2


# ---------------------------------------------------------------------------------------------------- EXIF orientation
def _rot6_jpeg(path: Path):
    """An orientation-6 JPEG (stored 24x40, shown 40x24) and its upright pixels, rotated with numpy (not PIL)."""
    arr = np.random.default_rng(5).integers(0, 256, (40, 24, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(path, format="JPEG", quality=95, exif=exif)
    return np.rot90(np.asarray(Image.open(path).convert("RGB")), k=-1).copy()


def test_exif_orientation_is_the_same_on_every_path(models, tmp_path):
    """One orientation-6 JPEG through distill's teacher batches, train-student's batches (KD rows and raw
    references), evaluate and predict: the same upright pixels everywhere."""
    world, teacher, student = models
    task, processor = get_task("caption"), load_ofa_processor(teacher)
    proc = processor.image_processor
    jpg, png = tmp_path / "rot6.jpg", tmp_path / "upright.png"
    upright = _rot6_jpeg(jpg)
    Image.fromarray(upright).save(png)  # lossless: the same pixels without any EXIF
    expected = proc.process_image(Image.fromarray(upright))
    stored = Image.fromarray(np.asarray(Image.open(jpg).convert("RGB")))  # the pixels as stored, no EXIF
    assert not np.allclose(expected, proc.process_image(stored))  # so a path that ignores the orientation fails

    feats = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(),
                               "captions": datasets.List(datasets.Value("string"))})
    def split(path):
        return datasets.Dataset.from_dict({"id": ["r0", "r1"], "image": [str(path)] * 2,
                                           "captions": [["a red circle"]] * 2}, features=feats)
    datasets.DatasetDict({"train": split(jpg), "validation": split(jpg)}).save_to_disk(str(tmp_path / "rot"))
    datasets.DatasetDict({"train": split(png), "validation": split(png)}).save_to_disk(str(tmp_path / "up"))

    src = open_source(tmp_path / "rot", "train", None, task)
    ofa = load_model(teacher, task=task, device="cpu")
    teacher_batch = _Collate(task, ofa, images=False)([(0, src[0])])  # distill's DataLoader
    np.testing.assert_array_equal(teacher_batch["inputs"]["patch_images"][0].numpy(), expected)
    run_distill(DistillConfig(task="caption", teacher=str(teacher), data=str(tmp_path / "rot"),
                              out=str(tmp_path / "kd"), batch_size=2, num_beams=1, max_new_tokens=4, num_workers=0,
                              shard_size=2, progress=False))
    for data, column in ((tmp_path / "kd", "target"), (tmp_path / "rot", "references")):
        rows = TaskRows(load_training_data(data, "train", task), task, processor, column)
        np.testing.assert_array_equal(rows.example(0, 0)["pixels"], expected)  # train-student's batches
    for model in (student, teacher):  # evaluate's batches
        prep = prepare_rows(load_model(model, task=task, device="cpu"), [dict(r) for r in src], task)
        assert prep.good == [0, 1]
        np.testing.assert_array_equal(prep.inputs["patch_images"][0].numpy(), expected)
    for model in (student, teacher):  # end to end: the JPEG predicts as its upright PNG does
        assert pr(model, "caption", jpg) == pr(model, "caption", png)
        assert ev(model, "caption", tmp_path / "rot", limit=2).predictions == ev(model, "caption", tmp_path / "up",
                                                                                 limit=2).predictions


# ---------------------------------------------------------------------------------------------------- bad inputs
def _truncated_copy(model: Path, dest: Path) -> Path:
    shutil.copytree(model, dest)
    weights = dest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return dest


def test_inputs_are_checked_before_the_model_and_weights_errors_name_the_file(models, tmp_path):
    """A truncated weights file fails in one line naming it; and with such a file, a bad split, image or text still
    reports the input: the inputs were checked before any weight was read."""
    world, _, student = models
    bad = _truncated_copy(student, tmp_path / "bad")
    weights_line = rf"cannot read weights file {bad / 'model.safetensors'} \(.*\): it is truncated or corrupt"
    with pytest.raises(UserError, match=weights_line):
        ev(bad, "caption", world, limit=2)
    image = tmp_path / "img.png"
    datasets.load_from_disk(str(world))["test"][0]["image"].save(image)
    with pytest.raises(UserError, match=weights_line):
        pr(bad, "caption", image)
    with pytest.raises(UserError, match="split 'nope' not found"):
        ev(bad, "caption", world, split="nope")
    with pytest.raises(UserError, match="is a folder, not an image file"):
        pr(bad, "caption", tmp_path)
    with pytest.raises(UserError, match="image file not found"):
        pr(bad, "caption", tmp_path / "missing.png")
    with pytest.raises(UserError, match="needs the text field 'question'"):
        pr(bad, "vqa", image)


def _main(argv: list, capsys) -> str:
    """Run the real `narvl-pipe` entry point; return its stderr, asserting exit code 2."""
    capsys.readouterr()  # drop what the set-up printed
    old = sys.argv
    sys.argv = ["narvl-pipe", *map(str, argv)]
    try:
        with pytest.raises(SystemExit) as exit_:
            main()
    finally:
        sys.argv = old
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_cli_bad_inputs_print_one_line(models, tmp_path, capsys):
    world, _, student = models
    bad = _truncated_copy(student, tmp_path / "bad")
    err = _main(["predict", "--model", student, "--task", "caption", "--image", tmp_path], capsys)
    assert err == f"error: --image {tmp_path} is a folder: pass one image file (evaluate --data scores a folder)\n"
    err = _main(["evaluate", "--model", bad, "--task", "caption", "--data", world], capsys)
    assert err.startswith(f"error: cannot read weights file {bad / 'model.safetensors'}") and err.count("\n") == 1
    empty = tmp_path / "empty"
    datasets.Dataset.from_dict({"id": [], "image": [], "captions": []}, features=datasets.Features({
        "id": datasets.Value("string"), "image": datasets.Image(),
        "captions": datasets.List(datasets.Value("string"))})).save_to_disk(str(empty))
    err = _main(["evaluate", "--model", student, "--task", "caption", "--data", empty], capsys)
    assert err == f"error: {empty} has no rows (an empty save_to_disk dataset): point it at a dataset with examples\n"


def test_evaluate_skips_an_undecodable_image_and_a_row_without_reference(models, tmp_path):
    """One broken image and one row without a reference caption: scored on the others (the same score as without
    them), counted, and their reasons written next to the predictions; nothing usable at all is an error."""
    world, _, student = models
    rows = datasets.load_from_disk(str(world))["validation"].select(range(5))
    broken = rows.cast_column("image", datasets.Image(decode=False)).map(
        lambda r, i: {"image": {"bytes": b"not an image" if i == 1 else r["image"]["bytes"], "path": None},
                      "captions": [] if i == 3 else r["captions"]}, with_indices=True)
    datasets.DatasetDict({"validation": broken}).save_to_disk(str(tmp_path / "broken"))
    datasets.DatasetDict({"validation": rows.select([0, 2, 4])}).save_to_disk(str(tmp_path / "good"))
    res = ev(student, "caption", tmp_path / "broken", batch_size=2, out=str(tmp_path / "p.jsonl"))
    ref = ev(student, "caption", tmp_path / "good")
    assert res.num_skipped == 2 and res.num_samples == 3 and res.predictions == ref.predictions
    assert res.metrics == ref.metrics
    assert [json.loads(x)["id"] for x in (tmp_path / "p.jsonl").read_text().splitlines()] == [
        rows[i]["id"] for i in (0, 2, 4)]
    skips = [json.loads(x) for x in (tmp_path / "p.skipped.jsonl").read_text().splitlines()]
    assert [(s["id"], s["index"]) for s in skips] == [(rows[1]["id"], 1), (rows[3]["id"], 3)]
    assert "cannot decode image" in skips[0]["reason"] and "no reference caption" in skips[1]["reason"]
    assert f"2 unusable rows skipped (see {tmp_path / 'p.skipped.jsonl'})" in res.line()
    all_bad = broken.map(lambda r: {"image": {"bytes": b"junk", "path": None}})
    datasets.DatasetDict({"validation": all_bad}).save_to_disk(str(tmp_path / "all_bad"))
    with pytest.raises(UserError, match=r"none of the 5 rows is usable \(unreadable image, empty text or no "
                                        r"reference\); first: cannot decode image"):
        ev(student, "caption", tmp_path / "all_bad")
