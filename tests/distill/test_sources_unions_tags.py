"""Split unions (`train+restval`) for every source kind, VQA object tags in the schema and the prompt, and the
one-time warning for entailment sources without a premise."""
from __future__ import annotations

import base64
import json
import sys
import warnings
from pathlib import Path

import pytest
from datasets import DatasetDict

sys.path.insert(0, str(Path(__file__).parent))
from distill_helpers import make_dataset, png_bytes  # noqa: E402

from distill.errors import UserError  # noqa: E402
from distill.sources import open_source  # noqa: E402
from distill.tasks import get_task  # noqa: E402

CAPTION = get_task("caption")


def _b64(seed: int) -> str:
    return base64.urlsafe_b64encode(png_bytes(seed)).decode()


def _union_ids(src, **kw) -> list[str]:
    return open_source(src, "train+restval", None, CAPTION, **kw)["id"]


def test_union_of_save_to_disk_splits_in_order(tmp_path):
    dd = DatasetDict({"train": make_dataset(3), "restval": make_dataset(5).select(range(3, 5))})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert _union_ids(tmp_path / "dd") == ["img0000", "img0001", "img0002", "img0003", "img0004"]
    assert open_source(tmp_path / "dd", "train+restval", None, CAPTION, limit=4)["id"][-1] == "img0003"
    with pytest.raises(UserError, match=r"^split 'val' not found in .*; available: restval, train$"):
        open_source(tmp_path / "dd", "train+val", None, CAPTION)
    with pytest.raises(UserError, match="union of distinct ones"):
        open_source(tmp_path / "dd", "train+train", None, CAPTION)


def test_union_of_karpathy_json_splits(tmp_path):
    images = [{"filepath": "", "filename": f"{i}.png", "cocoid": i, "split": s,
               "sentences": [{"raw": f"caption {i}"}]} for i, s in enumerate(["train", "restval", "val", "train"])]
    for i in range(4):
        (tmp_path / f"{i}.png").write_bytes(png_bytes(i))
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": images}))
    # Karpathy's usual 113k training set is train + restval: 2 train images, then the restval one.
    assert _union_ids(tmp_path / "dataset_coco.json") == ["0", "3", "1"]


def test_union_of_tsv_files_parquet_and_imagefolder(tmp_path):
    d = tmp_path / "tsv"
    d.mkdir()
    (d / "caption_train.tsv").write_text(f"11\t501\ta dog\tdog\t{_b64(0)}\n")
    (d / "caption_restval.tsv").write_text(f"12\t502\ta cat\tcat\t{_b64(1)}\n13\t503\ta cow\tcow\t{_b64(2)}\n")
    assert _union_ids(d) == ["11", "12", "13"]

    # Folders read by `load_dataset` know only the standard split names (datasets' file-name patterns).
    pq = tmp_path / "pq"
    pq.mkdir()
    ds = make_dataset(3)
    ds.select(range(2)).to_parquet(str(pq / "train-00000.parquet"))
    ds.select(range(2, 3)).to_parquet(str(pq / "validation-00000.parquet"))
    assert open_source(pq, "train+validation", None, CAPTION)["id"] == ["img0000", "img0001", "img0002"]

    for split, n in (("train", 1), ("test", 2)):
        root = tmp_path / "imgs" / split
        root.mkdir(parents=True)
        meta = []
        for i in range(n):
            (root / f"{split}{i}.png").write_bytes(png_bytes(i))
            meta.append({"file_name": f"{split}{i}.png", "captions": [f"shape {i}"]})
        (root / "metadata.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    # No id column: generated per split ("<split>-<row>"), so they stay distinct in the union.
    ids = open_source(tmp_path / "imgs", "train+test", None, CAPTION)["id"]
    assert ids == ["train-0", "test-0", "test-1"]


def test_train_student_reads_a_union_of_a_distilled_dataset_dict(tmp_path):
    from student.data import load_training_data

    rows = make_dataset(4).add_column("target", ["a red circle"] * 4)
    DatasetDict({"train": rows.select(range(3)), "restval": rows.select([3])}).save_to_disk(str(tmp_path / "d"))
    assert load_training_data(tmp_path / "d", "train+restval", CAPTION)["id"] == [f"img000{i}" for i in range(4)]


def test_vqa_object_tags_from_tsv_enter_the_prompt(tmp_path):
    tags = "&&".join(f"tag{i}" for i in range(35))
    f = tmp_path / "vqa_train.tsv"
    f.write_text(f"q1\t501\tis it red\t1.0|!+yes\t{tags}\t{_b64(3)}\n"
                 f"q2\t502\tis it blue?\t1.0|!+no\t\t{_b64(4)}\n")
    vqa = get_task("vqa")
    ds = open_source(f, "train", None, vqa)
    assert ds[0]["object_tags"] == [f"tag{i}" for i in range(35)] and ds[1]["object_tags"] == []
    # OFA's vqa_gen_dataset with --add-object: " {question}" + " object: " + the first 30 tags joined by spaces.
    assert vqa.prompt(ds[0]) == " is it red? object: " + " ".join(f"tag{i}" for i in range(30))
    assert vqa.prompt(ds[1]) == " is it blue?"


def test_entailment_without_premise_warns_once_per_source(tmp_path):
    rows = make_dataset(3, "entailment")
    rows.remove_columns("premise").save_to_disk(str(tmp_path / "np"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):
            ds = open_source(tmp_path / "np", "train", None, get_task("entailment"))
    assert ds["premise"] == ["", "", ""]
    hits = [w for w in caught if "no-premise prompt" in str(w.message)]
    assert len(hits) == 1 and "--add-caption" in str(hits[0].message)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        open_source(_with_premise(tmp_path), "train", None, get_task("entailment"))
    assert not [w for w in caught if "no-premise" in str(w.message)]


def _with_premise(tmp_path: Path) -> Path:
    make_dataset(2, "entailment").save_to_disk(str(tmp_path / "wp"))
    return tmp_path / "wp"


def test_object_tags_travel_through_distill_into_the_students_prompt(tmp_path):
    """The teacher sees the tags in its prompt, the distilled rows keep them, and the student's prompt is the same."""
    from distill_helpers import make_teacher

    from distill.ofa import OFAProcessor
    from distill.ofa.image_processing_ofa import OFAImageProcessor
    from distill.run import DistillConfig, run_distill
    from distill.ofa.tokenization_ofa import load_ofa_tokenizer
    from student.data import TaskRows, load_training_data

    teacher = make_teacher(tmp_path / "teacher")
    rows = make_dataset(2, "vqa").add_column("object_tags", [["red", "circle"], []])
    rows.save_to_disk(str(tmp_path / "src"))
    (tmp_path / "answers.txt").write_text("red\nblue\ngreen\n")
    run_distill(DistillConfig(task="vqa", teacher=str(teacher), data=str(tmp_path / "src"), out=str(tmp_path / "d"),
                              answers=str(tmp_path / "answers.txt"), num_beams=2, max_new_tokens=3, num_workers=0, progress=False,
                              batch_size=2))
    vqa = get_task("vqa")
    distilled = load_training_data(tmp_path / "d", "train", vqa)
    assert distilled["object_tags"] == [["red", "circle"], []]
    assert distilled[0]["prompt"] == " what color is the circle? object: red circle"
    tok = load_ofa_tokenizer(teacher)
    ex = TaskRows(distilled, vqa, OFAProcessor(OFAImageProcessor(size=32), tok)).example(0, 0)
    assert tok.decode(ex["input_ids"], skip_special_tokens=True) == distilled[0]["prompt"]
