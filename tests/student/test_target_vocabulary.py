"""KD targets in the student's vocabulary: a distilled dataset records its teacher's tokenizer hash; a student with
that tokenizer learns the teacher's `target_ids` as they are, another one gets targets re-encoded by the task from the
canonical prediction (`target`, grounding's `target_box`), and a dataset without one is refused in one line."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import datasets
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distill"))

from distill.errors import UserError  # noqa: E402
from distill.ofa import OFAProcessor  # noqa: E402
from distill.ofa.image_processing_ofa import OFAImageProcessor  # noqa: E402
from distill.ofa.tokenization_ofa import (load_ofa_tokenizer, text_to_bins, token_ids_to_bins,  # noqa: E402
                                          train_tiny_tokenizer)
from distill.run import DistillConfig, run_distill  # noqa: E402
from distill.tasks import get_task  # noqa: E402
from distill.tasks.base import clean_caption  # noqa: E402
from distill.tasks.grounding import box_to_bins, original_size  # noqa: E402
from distill.prediction import tokenizer_sha256  # noqa: E402
from student.data import TaskRows, load_training_data, needs_reencoding  # noqa: E402


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    from distill_helpers import WORDS, make_dataset, make_teacher

    root = tmp_path_factory.mktemp("vocab")
    teacher = make_teacher(root / "teacher", resolution=32)
    out = {}
    for task in ("caption", "grounding"):
        make_dataset(6, task).save_to_disk(str(root / f"src-{task}"))
        run_distill(DistillConfig(task=task, teacher=str(teacher), data=str(root / f"src-{task}"),
                                  out=str(root / f"kd-{task}"), batch_size=3, num_beams=2, num_workers=0,
                                  progress=False, **({"max_new_tokens": 4} if task == "caption" else {})))
        out[task] = root / f"kd-{task}"
    # a student vocabulary of another BPE and more bins: every id means something else
    other = train_tiny_tokenizer(list(reversed(WORDS)) * 10 + ["circles squares"] * 5, vocab_size=280, num_codes=0,
                                 num_bins=32)
    return teacher, out, other


def _rows(folder: Path, task, tokenizer, reencode: bool):
    ds = load_training_data(folder)
    return ds, TaskRows(ds, task, OFAProcessor(OFAImageProcessor(size=32), tokenizer), reencode=reencode)


def test_manifest_records_the_teacher_and_its_tokenizer(distilled):
    teacher, out, _ = distilled
    record = json.loads((out["caption"] / "manifest.json").read_text())["teacher_identity"]
    assert record["family"] == "ofa" and record["source"]["id"] == str(teacher)
    assert record["tokenizer_sha256"] == tokenizer_sha256(load_ofa_tokenizer(teacher))


def test_same_tokenizer_uses_the_teacher_ids_as_they_are(distilled):
    teacher, out, _ = distilled
    tok = load_ofa_tokenizer(teacher)
    ds = load_training_data(out["grounding"])
    assert needs_reencoding(out["grounding"], ds, tok) is False
    ds, rows = _rows(out["grounding"], get_task("grounding"), tok, reencode=False)
    assert [rows.target_ids(r, 0)[0] for r in ds] == ds["target_ids"]


def test_kd_captions_are_cleaned_as_narvl_caption_dataset_then_reencoded(distilled):
    """NARVL's `CaptionDataset` (amazon-science/NARVL@1ed7fc3 `data/mm_data/caption_dataset.py`) cleans every
    training caption, the distilled ones included (its KD captions sit in the TSV's caption column): line 102
    `transtab = str.maketrans({key: None for key in string.punctuation})`, lines 130-133 `caption.translate(
    transtab).strip()`, `' '.join(caption.strip().split()[:max_tgt_length])` with `max_tgt_length=20`
    (`run_scripts/caption_nat/train_caption_stage1_huge_distill_from_huge_20.sh` line 34). The project lower-cases
    too (issue 22 point 7: OFA's caption data are lower case; a non-OFA teacher writes capitals). The teacher's own
    `target_ids` are not used, even with the same tokenizer: the student learns the cleaned `target` text."""
    import string

    teacher, out, _ = distilled
    tok, task = load_ofa_tokenizer(teacher), get_task("caption")
    ds = load_training_data(out["caption"])
    long = " ".join(f"Word{i}," for i in range(25))  # 25 words: cut at 20
    ds = ds.map(lambda r, i: {"target": ["A Red circle, on the LEFT.", long][i % 2] if i < 2 else r["target"]},
                with_indices=True)
    assert needs_reencoding(out["caption"], ds, tok) is False  # same tokenizer: no re-encoding asked for
    rows = TaskRows(ds, task, OFAProcessor(OFAImageProcessor(size=32), tok), reencode=False)
    table = str.maketrans({k: None for k in string.punctuation})  # NARVL's, written out
    for r in ds:
        words = r["target"].translate(table).strip().split()[:20]
        expected = tok(" " + " ".join(words).lower(), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert rows.target_ids(r, 0) == (expected, 1.0)
    got = [tok.decode(rows.target_ids(r, 0)[0], skip_special_tokens=True).strip() for r in ds]
    assert got[0] == "a red circle on the left" and len(got[1].split()) == 20


def test_other_tokenizer_reencodes_text_targets(distilled):
    _, out, other = distilled
    task = get_task("caption")
    ds = load_training_data(out["caption"])
    assert needs_reencoding(out["caption"], ds, other) is True
    ds, rows = _rows(out["caption"], task, other, reencode=True)
    for r in ds:
        ids, weight = rows.target_ids(r, 0)
        text = clean_caption(r["target"], 20)  # NARVL's caption cleaning (the test above)
        expected = other(" " + text, add_special_tokens=False)["input_ids"] + [other.eos_token_id]
        assert ids == expected and weight == 1.0
        assert other.decode(ids, skip_special_tokens=True).strip() == text
    assert any(rows.target_ids(r, 0)[0] != r["target_ids"] for r in ds)  # the teacher's ids would be wrong here


def test_grounding_target_box_is_the_box_of_the_bins(distilled):
    teacher, out, _ = distilled
    tok, task = load_ofa_tokenizer(teacher), get_task("grounding")
    ds = load_training_data(out["grounding"])
    assert ds.features["target_box"] == datasets.List(datasets.Value("float64"))
    for r in ds:
        bins = token_ids_to_bins(r["target_ids"][:-1], tok)
        assert text_to_bins(r["target"]) == bins and len(bins) == 4
        w, h = original_size(r)
        # the box inverts the bins: OFA's rule (x0 y0 x1 y1 over num_bins - 1 steps of the resized side)
        assert r["target_box"] == pytest.approx([b / 15 * s for b, s in zip(bins, (w, h, w, h))])
        assert box_to_bins(r["target_box"], w, h, 16, task.resolution) == bins


def test_other_tokenizer_reencodes_boxes_into_its_bins(distilled):
    _, out, other = distilled
    task = get_task("grounding")
    ds, rows = _rows(out["grounding"], task, other, reencode=True)
    for r in ds:
        ids, _ = rows.target_ids(r, 0)
        w, h = original_size(r)
        assert token_ids_to_bins(ids[:-1], other) == box_to_bins(r["target_box"], w, h, 32, task.resolution)
        assert ids[-1] == other.eos_token_id


def test_no_canonical_prediction_is_refused_in_one_line(distilled):
    _, out, other = distilled
    ds = load_training_data(out["caption"]).remove_columns("target")
    with pytest.raises(UserError, match=r"tokenizer .* is not the student's .* no canonical `target`") as err:
        needs_reencoding(out["caption"], ds, other)
    assert "\n" not in str(err.value)
    ds = load_training_data(out["grounding"]).remove_columns("target_box")
    _, rows = _rows(out["grounding"], get_task("grounding"), other, reencode=True)
    row = dict(ds[0], target="not bins")
    with pytest.raises(UserError, match="gave no box"):
        rows.target_ids(row, 0)
