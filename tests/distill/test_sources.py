"""distill.sources: every source format opens in the canonical schema; bad split/column names fail in one line."""
from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict, Image, List, Value
from PIL import Image as PILImage

sys.path.insert(0, str(Path(__file__).parent))
from distill_helpers import make_dataset, png_bytes  # noqa: E402

from distill.errors import UserError  # noqa: E402
from distill.sources import ids_fingerprint, open_source  # noqa: E402
from pipelines.options import parse_columns  # noqa: E402
from distill.tasks import get_task  # noqa: E402


def _pixels(image_storage: dict) -> bytes:
    src = image_storage["bytes"] if image_storage["bytes"] is not None else Path(image_storage["path"]).read_bytes()
    return PILImage.open(io.BytesIO(src)).convert("RGB").tobytes()


def _ref_pixels(seed: int) -> bytes:
    return PILImage.open(io.BytesIO(png_bytes(seed))).convert("RGB").tobytes()


def test_save_to_disk_dict_and_dataset(tmp_path):
    dd = DatasetDict({"train": make_dataset(3), "validation": make_dataset(2, "vqa")})
    dd.save_to_disk(str(tmp_path / "dd"))
    ds = open_source(tmp_path / "dd", "train", None, get_task("caption"))
    assert ds.column_names == ["id", "image", "captions"]
    assert ds.features["image"] == Image(decode=False)  # decoded later, in the DataLoader workers
    assert ds["id"] == ["img0000", "img0001", "img0002"]
    assert _pixels(ds[1]["image"]) == _ref_pixels(1)
    vqa = open_source(tmp_path / "dd", "validation", None, get_task("vqa"), limit=1)
    assert vqa.column_names == ["id", "image", "question", "answers"] and len(vqa) == 1
    with pytest.raises(UserError, match=r"^split 'trian' not found in .*; available: train, validation$"):
        open_source(tmp_path / "dd", "trian", None, get_task("caption"))
    make_dataset(2).save_to_disk(str(tmp_path / "one"))
    assert len(open_source(tmp_path / "one", "train", None, get_task("caption"))) == 2


def test_column_mapping_and_one_line_errors(tmp_path):
    ds = Dataset.from_dict({"uid": [7, 8], "picture": [{"bytes": png_bytes(0), "path": None}] * 2,
                            "text": ["a red circle", "a blue square"]}).cast_column("picture", Image())
    ds.save_to_disk(str(tmp_path / "src"))
    task = get_task("caption")
    with pytest.raises(UserError, match=r"^column 'image' missing for task caption; columns: uid, picture, text$"):
        open_source(tmp_path / "src", "train", None, task)
    cols = parse_columns(["image=picture", "captions=text", "id=uid"])
    out = open_source(tmp_path / "src", "train", cols, task)
    assert out["id"] == ["7", "8"] and out["captions"] == [["a red circle"], ["a blue square"]]
    assert out.features["captions"] == List(Value("string"))
    with pytest.raises(UserError, match=r"^`columns` captions=txt: column 'txt' not found; columns: uid, picture, text$"):
        open_source(tmp_path / "src", "train", {"image": "picture", "captions": "txt"}, task)
    with pytest.raises(UserError, match="not a canonical column"):
        open_source(tmp_path / "src", "train", {"caption": "text"}, task)
    with pytest.raises(UserError, match="expected canonical=source"):
        parse_columns(["captions"])
    vqa = get_task("vqa")
    with pytest.raises(UserError, match=r"^column 'question' missing for task vqa; columns: id, image, captions$"):
        open_source(tmp_path / "src", "train", {"image": "picture", "captions": "text", "id": "uid"}, vqa)
    # No id column at all: the row index, prefixed by the split, is the stable id.
    no_id = open_source(tmp_path / "src", "train", {"image": "picture"}, task)
    assert no_id["id"] == ["train-0", "train-1"]


def test_parquet_and_arrow_files_and_folders(tmp_path):
    ds = make_dataset(4)
    ds.to_parquet(str(tmp_path / "one.parquet"))
    (tmp_path / "pq").mkdir()
    ds.select(range(3)).to_parquet(str(tmp_path / "pq" / "train-00000.parquet"))
    ds.select(range(3, 4)).to_parquet(str(tmp_path / "pq" / "validation-00000.parquet"))
    task = get_task("caption")
    one = open_source(tmp_path / "one.parquet", "train", None, task)
    assert one["id"] == ds["id"] and one["captions"] == ds["captions"]
    assert _pixels(one[2]["image"]) == _ref_pixels(2)
    assert open_source(tmp_path / "pq", "validation", None, task)["id"] == ["img0003"]
    with pytest.raises(UserError, match=r"^split 'test' not found in .*; available: train, validation$"):
        open_source(tmp_path / "pq", "test", None, task)
    arrow_dir = tmp_path / "arrow"
    ds.save_to_disk(str(arrow_dir))
    arrow_file = next(arrow_dir.glob("data-*.arrow"))
    assert open_source(arrow_file, "train", None, task)["id"] == ds["id"]


def test_imagefolder_with_metadata(tmp_path):
    root = tmp_path / "imgs" / "train"
    root.mkdir(parents=True)
    meta = []
    for i in range(3):
        (root / f"p{i}.png").write_bytes(png_bytes(i))
        meta.append({"file_name": f"p{i}.png", "id": f"pic{i}", "question": "what color is it", "answers": ["red"] * 3})
    (root / "metadata.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    ds = open_source(tmp_path / "imgs", "train", None, get_task("vqa"))
    assert sorted(ds["id"]) == ["pic0", "pic1", "pic2"]
    row = ds[ds["id"].index("pic1")]
    assert row["question"] == "what color is it" and row["answers"] == ["red"] * 3
    assert _pixels(row["image"]) == _ref_pixels(1)
    with pytest.raises(UserError, match=r"^split 'validation' not found .*; available: train$"):
        open_source(tmp_path / "imgs", "validation", None, get_task("vqa"))


def _b64(seed: int) -> str:
    return base64.urlsafe_b64encode(png_bytes(seed)).decode()


def test_ofa_tsv_layouts(tmp_path):
    """OFA-Sys column orders (run_scripts selected_cols): caption 0,4,2; vqa 0,5,2,3,4; refcoco 0,4,2,3; snli_ve 0,2,3,4,5."""
    d = tmp_path / "tsv"
    d.mkdir()
    (d / "caption_train.tsv").write_text(
        f"11\t501\ta man riding a horse&&a person on a horse\tman,horse\t{_b64(0)}\n"
        f"12\t502\ttwo dogs\tdog\t{_b64(1)}\n")
    (d / "caption_val.tsv").write_text(f"13\t503\ta cat\tcat\t{_b64(2)}\n")
    cap = open_source(d, "train", None, get_task("caption"))
    assert cap["id"] == ["11", "12"]
    assert cap["captions"] == [["a man riding a horse", "a person on a horse"], ["two dogs"]]
    assert _pixels(cap[1]["image"]) == _ref_pixels(1)
    with pytest.raises(UserError, match=r"^split 'test' not found in .*; available: train, val$"):
        open_source(d, "test", None, get_task("caption"))

    vqa_file = tmp_path / "vqa_train.tsv"
    vqa_file.write_text(f"q1\t501\tis it red?\t1.0|!+yes&&0.3|!+no&&0.6|!+no\tcar&&red car\t{_b64(3)}\n")
    vqa = open_source(vqa_file, "train", None, get_task("vqa"))
    assert vqa[0]["question"] == "is it red?"
    # OFA's ref_dict: answer -> confidence (a repeated answer keeps the last one), not answers repeated 3*conf times
    assert vqa[0]["answer_scores"] == [{"answer": "yes", "confidence": 1.0}, {"answer": "no", "confidence": 0.6}]
    assert vqa[0]["answers"] == ["yes", "no"] and vqa[0]["object_tags"] == ["car", "red car"]
    vqa_task = get_task("vqa")
    assert vqa_task.evaluate(["yes"], [vqa[0]])["vqa_accuracy"] == 100.0  # unanimous 1.0|!+yes scores 1.0, not 0.667
    assert vqa_task.evaluate(["no"], [vqa[0]])["vqa_accuracy"] == pytest.approx(60.0)

    ref_file = tmp_path / "refcoco_train.tsv"
    ref_file.write_text(f"r1\t501\tthe left man\t10.5,20,110,220.25\t{_b64(4)}\n")
    ref = open_source(ref_file, "train", None, get_task("grounding"))
    assert ref[0]["region_text"] == "the left man" and ref[0]["box"] == [10.5, 20.0, 110.0, 220.25]

    ve_file = tmp_path / "snli_ve_dev.tsv"
    ve_file.write_text(f"v1\t501\t{_b64(5)}\ttwo people outside\ta group walks in a park\tentailment\n")
    ve = open_source(ve_file, "dev", None, get_task("entailment"))
    assert (ve[0]["hypothesis"], ve[0]["premise"], ve[0]["label"]) == (
        "two people outside", "a group walks in a park", "entailment")
    assert _pixels(ve[0]["image"]) == _ref_pixels(5)
    with pytest.raises(UserError, match=r"^vqa_train.tsv has 6 tab-separated fields; OFA's caption TSV has 5: "):
        open_source(vqa_file, "train", None, get_task("caption"))


def test_coco_karpathy_json_with_image_root(tmp_path):
    root = tmp_path / "coco"
    (root / "val2014").mkdir(parents=True)
    images = []
    for i, split in enumerate(["train", "val", "restval", "test"]):
        (root / "val2014" / f"COCO_{i}.png").write_bytes(png_bytes(i))
        images.append({"filepath": "val2014", "filename": f"COCO_{i}.png", "imgid": i, "cocoid": 1000 + i,
                       "split": split, "sentences": [{"raw": f"caption {i} a", "tokens": []},
                                                     {"raw": f"caption {i} b", "tokens": []}]})
    ann = tmp_path / "ann" / "dataset_coco.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps({"images": images, "dataset": "coco"}))
    ds = open_source(ann, "val", None, get_task("caption"), image_root=root)
    assert ds["id"] == ["1001"] and ds["captions"] == [["caption 1 a", "caption 1 b"]]
    assert ds[0]["image"]["path"] == str(root / "val2014" / "COCO_1.png")
    assert _pixels(ds[0]["image"]) == _ref_pixels(1)
    with pytest.raises(UserError, match=r"^split 'validation' not found in .*; available: restval, test, train, val$"):
        open_source(ann, "validation", None, get_task("caption"), image_root=root)


def test_hub_id_offline_is_one_line_error_and_fingerprint_is_stable(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError) as err:
        open_source("someone/not-a-local-dataset", "train", None, get_task("caption"))
    assert "\n" not in str(err.value) and "someone/not-a-local-dataset" in str(err.value)
    ds = make_dataset(3)
    assert ids_fingerprint(ds) == ids_fingerprint(make_dataset(3))
    assert ids_fingerprint(ds) != ids_fingerprint(make_dataset(4))


def test_string_path_column_resolved_against_image_root(tmp_path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(png_bytes(7))
    Dataset.from_dict({"id": ["a", "b"], "file": ["a.png", "missing.png"], "question": ["is it red", "why"]}).to_parquet(
        str(tmp_path / "q.parquet"))
    ds = open_source(tmp_path / "q.parquet", "train", {"image": "file"}, get_task("vqa"), image_root=tmp_path / "pics")
    assert ds.features["image"] == Image(decode=False)
    assert [r["path"] for r in ds["image"]] == [str(tmp_path / "pics" / "a.png"), str(tmp_path / "pics" / "missing.png")]
    assert _pixels(ds[0]["image"]) == _ref_pixels(7)  # the missing file fails later, per row (quarantined)


def test_empty_sources_fail_in_one_line(tmp_path):
    """0 rows: `datasets` itself fails with an IndexError on these; each must be one UserError line."""
    task = get_task("caption")
    feats = {"id": Value("string"), "image": Image(), "captions": List(Value("string"))}
    empty = Dataset.from_dict({"id": [], "image": [], "captions": []}, features=feats_of(feats))
    empty.save_to_disk(str(tmp_path / "one"))
    DatasetDict({"train": make_dataset(2), "test": empty}).save_to_disk(str(tmp_path / "dd"))
    for src, split, where in ((tmp_path / "one", "train", "one"), (tmp_path / "dd", "test", "split 'test' of")):
        with pytest.raises(UserError, match=f"{where}.* has no rows") as err:
            open_source(src, split, None, task)
        assert "\n" not in str(err.value)
    assert len(open_source(tmp_path / "dd", "train", None, task)) == 2  # the other split still opens alone
    for name, text in (("metadata.jsonl", "\n"), ("metadata.csv", "file_name,captions\n")):
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        (folder / "a.png").write_bytes(png_bytes(0))
        (folder / name).write_text(text)
        with pytest.raises(UserError, match=f"{name} lists no images"):
            open_source(folder, "train", None, task)


def feats_of(feats: dict):
    from datasets import Features

    return Features(feats)
