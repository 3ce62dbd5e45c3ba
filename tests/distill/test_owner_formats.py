"""distill.owner_formats through `open_source`: VQAv2, RefCOCO and SNLI-VE in their owners' files (tiny hand-made
copies, `owner_copies.py`) give the rows the files hold; a file is recognised by its content, not its name; a
missing partner file or image folder is a one-line error naming it."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image as PILImage

sys.path.insert(0, str(Path(__file__).parent))
from owner_copies import (REFCOCO_ANNS, REFS, SNLI_VE, VQA_QUESTIONS, py2_pickle, refs_records,  # noqa: E402
                          write_refcoco, write_snli_ve, write_vqav2)

from distill.errors import UserError  # noqa: E402
from distill.owner_formats import file_kind  # noqa: E402
from distill.sources import open_source  # noqa: E402
from distill.tasks import get_task  # noqa: E402

VQA, GROUNDING, ENTAILMENT, CAPTION = (get_task(n) for n in ("vqa", "grounding", "entailment", "caption"))


def _opens(row: dict) -> tuple[int, int]:
    with PILImage.open(row["image"]["path"]) as img:
        return img.size


# ---------------------------------------------------------------------------------------------------- VQAv2
@pytest.mark.parametrize("official_layout", [False, True])
def test_vqav2_rows_are_the_questions_with_their_ten_answers(tmp_path, official_layout):
    root = write_vqav2(tmp_path / "vqa", official_layout)
    images = root / "Images" / "mscoco" if official_layout else root
    for split, sub in (("train", "train2014"), ("validation", "val2014"), ("val2014", "val2014")):
        ds = open_source(root, split, None, VQA)
        expected = VQA_QUESTIONS[sub]
        assert ds.column_names == ["id", "image", "question", "answers"]
        assert ds["id"] == [str(qid) for _, qid, _, _ in expected]
        assert ds["question"] == [q for _, _, q, _ in expected]
        assert ds["answers"] == [a for *_, a in expected]  # the 10 human answers, in the file's order
        assert [r["path"] for r in ds["image"]] == [
            str(images / sub / f"COCO_{sub}_{i:012d}.jpg") for i, *_ in expected]
        assert all(_opens(r) == (24, 20) for r in ds)
    # One questions file (any name: recognised by content) is its own split; its annotations are found by name.
    qfile = (root / "Questions" if official_layout else root) / "v2_OpenEnded_mscoco_val2014_questions.json"
    assert open_source(qfile, "validation", None, VQA)["id"] == ["42000", "73000"]
    with pytest.raises(UserError, match=r"^split 'train' not found in .*val2014_questions\.json; available: val2014$"):
        open_source(qfile, "train", None, VQA)
    # vqaEval's rule on the 10 humans: "cup" (6 of 10) scores 1; "yes" (3 of 10) scores the mean over the 10
    # leave-one-out sets of min(1, matches / 3): (3 x 2/3 + 7 x 1) / 10 = 0.9
    rows = list(open_source(root, "val2014", None, VQA))
    assert VQA.evaluate(["cup", "yes"], rows)["vqa_accuracy"] == pytest.approx(95.0)


def test_vqav2_test_split_has_questions_only(tmp_path):
    root = write_vqav2(tmp_path / "vqa")
    ds = open_source(root, "test", None, VQA)
    assert ds["id"] == ["1000", "5000"] and ds["answers"] == [[], []]  # no annotations ship for test2015
    assert ds[0]["image"]["path"] == str(root / "test2015" / "COCO_test2015_000000000001.jpg")


def test_vqav2_missing_files_are_named(tmp_path):
    root = write_vqav2(tmp_path / "vqa")
    (root / "v2_mscoco_val2014_annotations.json").unlink()
    with pytest.raises(UserError, match=r"^v2_OpenEnded_mscoco_val2014_questions\.json needs its answers "
                                        r"v2_mscoco_val2014_annotations\.json beside it .*; not found in "):
        open_source(root, "validation", None, VQA)
    with pytest.raises(UserError, match=r"^split 'test-dev' not found in .*; available: test2015, train2014, val2014$"):
        open_source(root, "test-dev", None, VQA)
    shutil.rmtree(root / "train2014")
    with pytest.raises(UserError, match=r"its image folder train2014/ is not in .*; pass `image_root` \(the folder "
                                        r"holding train2014/\)$") as err:
        open_source(root, "train", None, VQA)
    assert "\n" not in str(err.value)
    coco = tmp_path / "coco"
    shutil.copytree(tmp_path / "vqa" / "val2014", coco / "train2014")  # any images: the paths are what is checked
    ds = open_source(root, "train", None, VQA, image_root=coco)
    assert ds[0]["image"]["path"] == str(coco / "train2014" / "COCO_train2014_000000000009.jpg")
    with pytest.raises(UserError, match=r"is VQAv2 annotations: point `data` at its questions file"):
        open_source(root / "v2_mscoco_train2014_annotations.json", "train", None, VQA)


# ---------------------------------------------------------------------------------------------------- RefCOCO
def _ref_rows(split_match) -> list[tuple[str, str, list[float], int]]:
    rows = []
    for ref_id, ann_id, split, sents in REFS:
        if split_match(split):
            image_id, (x, y, w, h) = REFCOCO_ANNS[ann_id]
            rows += [(f"{ref_id}-{s}", sent, [x, y, x + w, y + h], image_id) for s, sent in sents]
    return rows


def test_refcoco_rows_are_one_per_sentence_with_xyxy_boxes(tmp_path):
    folder = write_refcoco(tmp_path / "data")
    images = tmp_path / "data" / "images" / "mscoco" / "images" / "train2014"
    for split, match in (("train", lambda s: s == "train"), ("validation", lambda s: s == "val"),
                         ("testA", lambda s: s == "testA"), ("test", lambda s: s.startswith("test"))):
        ds = open_source(folder, split, None, GROUNDING)
        expected = _ref_rows(match)
        assert ds.column_names == ["id", "image", "region_text", "box"]
        assert ds["id"] == [e[0] for e in expected]
        assert ds["region_text"] == [e[1] for e in expected]  # `sent`; the Python 2 UTF-8 bytes decoded
        assert ds["box"] == [e[2] for e in expected]  # [x, y, w, h] -> [x0, y0, x1, y1]
        assert [r["path"] for r in ds["image"]] == [str(images / f"COCO_train2014_{e[3]:012d}.jpg") for e in expected]
    train = open_source(folder, "train", None, GROUNDING)
    assert train["region_text"][3] == "café table" and train["box"][0] == [1.5, 2.0, 11.5, 10.25]
    assert _opens(train[0]) == (32, 24)
    with pytest.raises(UserError, match=r"^split 'restval' not found in .*refs\(unc\)\.p; available: testA, testB, "
                                        r"train, val$"):
        open_source(folder, "restval", None, GROUNDING)


def test_refs_pickle_is_recognised_by_content_and_read_as_data(tmp_path):
    folder = write_refcoco(tmp_path / "data")
    renamed = folder / "my_refs.pickle"
    shutil.copy(folder / "refs(unc).p", renamed)
    assert open_source(renamed, "val", None, GROUNDING)["id"] == ["2-4"]
    for protocol in (0, 2, 5):  # Python 3 pickles of the same refs (refer's Python 3 ports write these)
        (folder / "refs(unc).p").write_bytes(pickle.dumps(refs_records(), protocol=protocol))
        assert file_kind(folder / "refs(unc).p") == "refs"
        assert open_source(folder, "val", None, GROUNDING)["region_text"] == ["whole picture"]

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (folder / "refs(unc).p").write_bytes(pickle.dumps([{"ref_id": 0, "ann_id": 1, "sentences": [], "x": Evil()}]))
    with pytest.raises(UserError, match=r"^refs .*refs\(unc\)\.p: not a data-only pickle \(it refers to "
                                        r"(posix|os)\.system"):
        open_source(folder, "val", None, GROUNDING)


def test_refcoco_missing_files_are_named(tmp_path):
    folder = write_refcoco(tmp_path / "data")
    (folder / "refs(google).p").write_bytes(py2_pickle(refs_records()))
    with pytest.raises(UserError, match=r"holds refs\(google\)\.p, refs\(unc\)\.p: point `data` at one of them$"):
        open_source(folder, "train", None, GROUNDING)
    assert len(open_source(folder / "refs(google).p", "train", None, GROUNDING)) == 4
    (folder / "instances.json").rename(folder / "instances.bak")
    with pytest.raises(UserError, match=r"^refs\(unc\)\.p needs instances\.json beside it .*; not found in "):
        open_source(folder / "refs(unc).p", "train", None, GROUNDING)
    (folder / "instances.bak").rename(folder / "instances.json")
    with pytest.raises(UserError, match=r"is a COCO instances file: for RefCOCO/\+/g point `data` at the refs"):
        open_source(folder / "instances.json", "train", None, GROUNDING)
    shutil.rmtree(tmp_path / "data" / "images")
    with pytest.raises(UserError, match=r"its image folder train2014/ is not in .*images/mscoco/images; pass "
                                        r"`image_root`"):
        open_source(folder / "refs(unc).p", "train", None, GROUNDING)


# ---------------------------------------------------------------------------------------------------- SNLI-VE
def test_snli_ve_rows_from_the_jsonl_files(tmp_path):
    root = write_snli_ve(tmp_path / "data", images_under="Flickr30K")  # necla-ml's data/Flickr30K/flickr30k_images
    for split, name in (("train", "train"), ("validation", "dev"), ("test", "test")):
        ds = open_source(root, split, None, ENTAILMENT)
        assert ds.column_names == ["id", "image", "premise", "hypothesis", "label"]
        assert [(r["id"], r["premise"], r["hypothesis"], r["label"]) for r in ds] == [
            (pair, p, h, label) for _, pair, p, h, label in SNLI_VE[name]]
        assert [r["path"] for r in ds["image"]] == [
            str(root / "Flickr30K" / "flickr30k_images" / f"{fid}.jpg") for fid, *_ in SNLI_VE[name]]
        assert _opens(ds[0]) == (26, 22)
    # one file (recognised by content under any name) is the split its name says, or any split for another name
    assert len(open_source(root / "snli_ve_dev.jsonl", "validation", None, ENTAILMENT)) == 2
    with pytest.raises(UserError, match=r"^split 'train' not found in .*snli_ve_dev\.jsonl; available: dev$"):
        open_source(root / "snli_ve_dev.jsonl", "train", None, ENTAILMENT)
    shutil.copy(root / "snli_ve_test.jsonl", root / "Flickr30K" / "held_out.txt")
    assert open_source(root / "Flickr30K" / "held_out.txt", "anything", None, ENTAILMENT)["id"] == [
        "1000092795.jpg#1r1c"]


def test_snli_ve_older_spelling_and_missing_images(tmp_path):
    root = write_snli_ve(tmp_path / "ve")
    lines = [json.loads(ln) for ln in (root / "snli_ve_dev.jsonl").read_text().splitlines()]
    for rec in lines:  # the official parser's spelling of the image id
        rec["Flikr30kID"] = rec.pop("Flickr30K_ID")
    (root / "snli_ve_dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + "{not json\n")
    ds = open_source(root, "dev", None, ENTAILMENT)
    assert ds[0]["image"]["path"] == str(root / "flickr30k_images" / "4791890474.jpg")
    assert ds[2]["id"] == "snli_ve_dev.jsonl:3" and ds[2]["image"] == {"bytes": b"", "path": None}  # quarantined
    with pytest.raises(UserError, match=r"^split 'val2014' not found in .*; available: dev, test, train$"):
        open_source(root, "val2014", None, ENTAILMENT)
    shutil.rmtree(root / "flickr30k_images")
    with pytest.raises(UserError, match=r"its image folder flickr30k_images/ is not in .*Flickr30K"):
        open_source(root, "train", None, ENTAILMENT)


# ---------------------------------------------------------------------------------------------------- by content
def test_json_files_are_told_apart_by_content_not_suffix(tmp_path):
    karpathy = tmp_path / "captions.dat"  # a COCO-Karpathy file under another name
    karpathy.write_text(json.dumps({"images": [{"filepath": "", "filename": "a.jpg", "cocoid": 7, "split": "val",
                                                "sentences": [{"raw": "a dog", "tokens": ["a", "dog"]}]}],
                                    "dataset": "coco"}))
    assert open_source(karpathy, "val", None, CAPTION)["captions"] == [["a dog"]]
    other = tmp_path / "dataset.json"
    other.write_text(json.dumps({"data": [{"text": "a dog", "img": "a.jpg"}]}))
    with pytest.raises(UserError, match=r"^.*dataset\.json: unsupported file \(expected \.parquet, \.arrow, \.tsv, or a "
                                        r"benchmark's own file recognised by its content: COCO-Karpathy"):
        open_source(other, "train", None, CAPTION)
    # a VQAv2 source asked for another task names the columns it has
    root = write_vqav2(tmp_path / "vqa")
    with pytest.raises(UserError, match=r"^column 'region_text' missing for task grounding; columns: id, image, "
                                        r"question, answers$"):
        open_source(root, "train", None, GROUNDING)
