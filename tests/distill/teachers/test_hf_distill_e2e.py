"""`narvl-pipe distill --teacher TINY_HF_FOLDER` over a shapes split, then `train-student` a few steps on the result,
for Florence-2, PaliGemma and GIT: rows hold the teacher's canonical predictions, the manifest its family and
tokenizer hash, and the OFA student learns them re-encoded in its own vocabulary."""
from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import datasets
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # the suite runs with --import-mode=importlib
sys.path.insert(0, str(Path(__file__).parents[2] / "student"))
import student_helpers as h  # noqa: E402
import tiny_hf  # noqa: E402

from distill.config import DistillConfig  # noqa: E402
from distill.ofa.tokenization_ofa import bin_token_ids, load_ofa_tokenizer  # noqa: E402
from distill.tasks import get_task  # noqa: E402
from student.data import TaskRows, load_training_data, needs_reencoding, target_vocabulary  # noqa: E402
from distill.teachers.hf import HFTeacher  # noqa: E402

pytestmark = pytest.mark.slow
DISTILL = ["--limit", "8", "--batch-size", "4", "--num-beams", "2", "--shard-size", "4"]
TRAIN = ["--max-steps", "2", "--batch-size", "4", "--lr", "1e-3", "--num-queries", "10", "--eval-limit", "2",
         "--report-to", "none"]


@pytest.fixture(scope="module")
def world_and_student_init(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-e2e")
    world = h.make_world(root, n_train=8, n_val=4)
    return root, world, h.make_teacher(world, root / "ofa", "caption", 1)


def _distil(root: Path, world: Path, folder: Path, task: str, *extra: str) -> tuple[Path, datasets.Dataset, dict]:
    out = root / f"d-{folder.name}-{task}"
    h.cli("distill", "--task", task, "--teacher", folder, "--data", world, "--out", out, *DISTILL, *extra)
    manifest = json.loads((out / "manifest.json").read_text())
    return out, load_training_data(out), manifest


def _check_identity(manifest: dict, folder: Path, family: str) -> None:
    cfg = DistillConfig(task="caption", teacher=str(folder), data="unused", out="unused")
    expected = HFTeacher.from_pretrained(folder, {"id": str(folder)}, cfg, torch.device("cpu")).identity
    record = manifest["teacher_identity"]
    assert record["family"] == family
    assert record["tokenizer_sha256"] == expected.tokenizer_sha256


def _train(root: Path, data: Path, init: Path, task: str) -> Path:
    out = root / f"s-{data.name}"
    res = h.cli("train-student", "--task", task, "--data", data, "--init", init, "--out", out, *TRAIN)
    assert f"student {task}: step 2" in res.output
    return out


def test_florence2_grounding_boxes_distil_and_train(world_and_student_init):
    """A Florence-2 teacher forced to write one known box: every row's `target_box` is that box in the row's
    original pixels; the student trains on it as OFA bins of its own tokenizer."""
    root, world, init = world_and_student_init
    folder = shutil.copytree(tiny_hf.build_florence2(root / "florence2-src"), root / "florence2")
    bins = [100, 250, 600, 875]  # x0 y0 x1 y1 on Florence-2's 1000-bin grid
    tiny_hf.force_sequence(folder, [f"<loc_{k}>" for k in bins])
    out, ds, manifest = _distil(root, world, folder, "grounding", "--num-workers", "1")
    _check_identity(manifest, folder, "florence2")
    task, ofa = get_task("grounding"), load_ofa_tokenizer(init)
    assert needs_reencoding(out, ds, ofa)
    for row in ds:
        w, h_ = row["image"].size
        want = [(k + 0.5) / 1000 * s for k, s in zip(bins, (w, h_, w, h_))]
        assert row["target_box"] == pytest.approx(want)
        assert row["target"] == "".join(f"<loc_{k}>" for k in bins)
        student_ids = task.student_target(row, ofa)
        assert len(student_ids) == 5 and all(t in set(bin_token_ids(ofa)) for t in student_ids[:4])
    _train(root, out, init, "grounding")


def test_paligemma_caption_and_grounding(world_and_student_init):
    root, world, init = world_and_student_init
    folder = tiny_hf.build_paligemma(root / "paligemma")
    out, ds, manifest = _distil(root, world, folder, "caption", "--max-new-tokens", "6")
    _check_identity(manifest, folder, "paligemma")
    tok = HFTeacher.from_pretrained(folder, {"id": "x"}, DistillConfig("caption", str(folder), "u", "u"),
                                    torch.device("cpu")).processor.tokenizer
    assert "teacher_prompt" in ds.column_names
    for row in ds:
        assert row["teacher_prompt"] == "caption en"  # the family's template; `prompt` stays OFA's (the student's)
        assert row["prompt"] == get_task("caption").prompt(row)
        assert row["target_ids"][-1] == tok.eos_token_id and len(row["target_ids"]) <= 7
        assert row["target"] == tok.decode(row["target_ids"][:-1], skip_special_tokens=True).strip()
    _train(root, out, init, "caption")

    forced = shutil.copytree(folder, root / "paligemma-forced")
    yx = [256, 128, 768, 960]  # y0 x0 y1 x1 on PaliGemma's 1024 location tokens
    tiny_hf.force_sequence(forced, [f"<loc{k:04d}>" for k in yx], after="Ċ")
    _, ds, _ = _distil(root, world, forced, "grounding")
    for row in ds:
        w, h_ = row["image"].size
        assert row["target_box"] == pytest.approx([yx[1] / 1023 * w, yx[0] / 1023 * h_,  # big_vision's / 1023
                                                   yx[3] / 1023 * w, yx[2] / 1023 * h_])


def test_git_entailment_choices_distil_and_train(world_and_student_init):
    root, world, init = world_and_student_init
    folder = tiny_hf.build_git(root / "git")
    out, ds, manifest = _distil(root, world, folder, "entailment", "--num-beams", "1")
    _check_identity(manifest, folder, "git")
    task = get_task("entailment")
    for row in ds:
        assert row["target"] in task.candidates
        assert math.isfinite(row["teacher_logprob"]) and row["teacher_logprob"] < 0
    _train(root, out, init, "entailment")


def test_vqa_from_a_free_answering_teacher_needs_no_answer_list(world_and_student_init, tmp_path, monkeypatch,
                                                                 capsys):
    """OFA decodes VQA over a closed answer list (`--answers` required); an HF teacher generates answers freely,
    so the list is neither needed nor accepted."""
    root, world, init = world_and_student_init
    folder = tiny_hf.build_git(root / "git-vqa")
    out, ds, manifest = _distil(root, world, folder, "vqa", "--max-new-tokens", "4")
    assert manifest["teacher_identity"]["family"] == "git" and len(ds) == 8
    assert all(row["target_ids"] and row["question"] for row in ds)
    _train(root, out, init, "vqa")
    from pipelines import cli

    capsys.readouterr()  # what training printed

    argv = ["narvl-pipe", "distill", "--task", "vqa", "--teacher", str(folder), "--data", str(world), "--out",
            str(tmp_path / "o"), "--answers", str(world / "answers.txt"), *DISTILL]
    with monkeypatch.context() as m, pytest.raises(SystemExit) as exc:
        m.setattr(sys, "argv", argv)
        cli.main()
    assert exc.value.code == 2 and capsys.readouterr().err.strip() == (
        "error: --answers applies to teachers that decode over an answer list (OFA); git generates its answers freely")


def test_git_set_pushed_and_loaded_back_trains_on_targets_reencoded_in_the_student_vocabulary(
        world_and_student_init, tmp_path):
    """Issue 19's Hub round trip: a set distilled by GIT, written with `push --dry-run DIR`, loaded back with
    `load_dataset(DIR)` and through `train-student --data DIR`: it still says which teacher vocabulary its ids are
    in, so the student learns `target` re-encoded in its own vocabulary, the same ids as from the local folder."""
    from distill.ofa.processing_ofa import load_ofa_processor
    from distill.provenance import read_provenance

    root, world, init = world_and_student_init
    folder = tiny_hf.build_git(root / "git-hub")
    out, local, manifest = _distil(root, world, folder, "caption", "--max-new-tokens", "5")
    pushed = tmp_path / "pushed"
    h.cli("push", out, "--repo-id", "someone/git-kd", "--dry-run", pushed)
    assert sorted(p.name for p in (pushed / "data").iterdir()) == sorted(p.name for p in (out / "data").iterdir())
    loaded = datasets.load_dataset(str(pushed), split="train", cache_dir=str(tmp_path / "cache"))
    record = read_provenance(loaded.features)
    assert record["teacher"]["tokenizer_sha256"] == manifest["teacher_identity"]["tokenizer_sha256"]
    assert record["teacher"]["family"] == "git" and record["teacher"]["source"]["id"] == "git-hub"

    processor = load_ofa_processor(init, size=32)
    task = get_task("caption")
    seen = {}
    for name, src in (("local", out), ("pushed", pushed)):
        ds = load_training_data(src, task=task)
        reencode, line = target_vocabulary(src, ds, processor.tokenizer)
        assert reencode and line.startswith("KD targets: re-encoded from `target` in the student's vocabulary")
        rows = TaskRows(ds, task, processor, reencode=reencode)
        seen[name] = {r["id"]: rows.target_ids(r, 0)[0] for r in ds}
    assert seen["pushed"] == seen["local"]
    tok = processor.tokenizer
    for r in local:
        assert seen["local"][r["id"]] == task.student_target(r, tok) != r["target_ids"]
    # the same set without its provenance (made by hand, or by an older version): unknown means re-encode too
    bare = loaded.cast_column("target_ids", datasets.List(datasets.Value("int32")))
    assert target_vocabulary(None, bare, tok)[1].endswith("(the teacher's tokenizer is not recorded in the data)")
    res = h.cli("train-student", "--task", "caption", "--data", pushed, "--init", init, "--out",
                tmp_path / "student", *TRAIN)
    assert "KD targets: re-encoded from `target` in the student's vocabulary (the teacher's tokenizer" in res.output
    card = (pushed / "README.md").read_text()
    assert "autoregressive git teacher" in card and "OFA teacher" not in card
    assert "--init OFA_CHECKPOINT" in card and "git-hub" in card
