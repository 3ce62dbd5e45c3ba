"""Tiny hand-made copies of the benchmarks in their owners' formats (DESIGN.md section 7), with real JPEGs.

Each writer lays the files out as the owner ships them and returns what a reader must yield, so that the tests
compare against the files' own values:
- VQAv2: `v2_OpenEnded_mscoco_{sub}_questions.json` + `v2_mscoco_{sub}_annotations.json` (fields as
  GT-Vision-Lab/VQA's vqa.py reads them), COCO images `{sub}/COCO_{sub}_%012d.jpg`; test2015 has questions only.
- RefCOCO: `refs(unc).p` pickled as Python 2's cPickle protocol 2 writes it (str as SHORT_BINSTRING bytes, which
  Python 3 never writes) + COCO-style `instances.json` (bbox [x, y, w, h]), refer's `images/mscoco/images/train2014`.
- SNLI-VE: `snli_ve_{train,dev,test}.jsonl` as necla-ml's generator writes them (keys sorted, `Flickr30K_ID` added),
  images `flickr30k_images/{id}.jpg`.
"""
from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
from PIL import Image

INFO = {"description": "tiny copy for tests", "version": "2.0", "year": 2017, "contributor": "narvl-pipe tests"}
LICENSE = {"url": "http://creativecommons.org/licenses/by/4.0/", "name": "Creative Commons Attribution 4.0"}


def jpeg(path: Path, seed: int, size: tuple[int, int] = (24, 20)) -> Path:
    """A real JPEG of random pixels (`size` = width, height)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="JPEG")
    path.write_bytes(buf.getvalue())
    return path


# ---------------------------------------------------------------------------------------------------- VQAv2
VQA_QUESTIONS = {  # data_subtype -> [(image_id, question_id, question, 10 human answers or None)]
    "train2014": [(9, 9000, "What color is the ball?", ["red"] * 8 + ["orange", "dark red"]),
                  (9, 9001, "Is there a dog?", ["yes"] * 10),
                  (25, 25000, "How many shapes are there?", ["2", "2", "two", "2", "3", "2", "2", "2", "2", "2"])],
    "val2014": [(42, 42000, "What is on the table?", ["cup"] * 6 + ["mug"] * 4),
                (73, 73000, "Is it sunny?", ["no"] * 7 + ["yes"] * 3)],
    "test2015": [(1, 1000, "What is the man holding?", None), (5, 5000, "Is the door open?", None)],
}


def write_vqav2(root: Path, official_layout: bool = False) -> Path:
    """VQAv2 in one folder (questions, annotations and image folders side by side), or in the official layout
    (`Questions/`, `Annotations/`, `Images/mscoco/{sub}/`). Returns the folder to point at."""
    qdir, adir = (root / "Questions", root / "Annotations") if official_layout else (root, root)
    images = root / "Images" / "mscoco" if official_layout else root
    for sub, rows in VQA_QUESTIONS.items():
        qdir.mkdir(parents=True, exist_ok=True)
        questions = [{"image_id": i, "question": q, "question_id": qid} for i, qid, q, _ in rows]
        (qdir / f"v2_OpenEnded_mscoco_{sub}_questions.json").write_text(json.dumps(
            {"info": INFO, "task_type": "Open-Ended", "data_type": "mscoco", "license": LICENSE,
             "data_subtype": sub, "questions": questions}))
        for k, (image_id, *_rest) in enumerate(rows):
            jpeg(images / sub / f"COCO_{sub}_{image_id:012d}.jpg", seed=image_id)
        if rows[0][3] is None:  # test2015: questions only
            continue
        adir.mkdir(parents=True, exist_ok=True)
        annotations = [{"question_type": "what color is the", "multiple_choice_answer": answers[0],
                        "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                                    for j, a in enumerate(answers)],
                        "image_id": i, "answer_type": "other", "question_id": qid} for i, qid, _, answers in rows]
        (adir / f"v2_mscoco_{sub}_annotations.json").write_text(json.dumps(
            {"info": INFO, "license": LICENSE, "data_subtype": sub, "annotations": annotations,
             "data_type": "mscoco"}))
    return root


# ---------------------------------------------------------------------------------------------------- RefCOCO
REFCOCO_IMAGES = {581857: (32, 24), 1000: (30, 28)}  # image_id -> (width, height)
REFCOCO_ANNS = {1719310: (581857, [1.5, 2.0, 10.0, 8.25]), 1719311: (581857, [12.0, 4.0, 16.0, 18.0]),
                2000: (1000, [0.0, 0.0, 29.0, 27.5])}  # ann_id -> (image_id, [x, y, w, h])
REFS = [  # (ref_id, ann_id, split, [(sent_id, sent)])
    (0, 1719310, "train", [(0, "the lady with the blue shirt"), (1, "lady in blue")]),
    (1, 1719311, "train", [(2, "man on the right"), (3, "café table")]),  # a non-ASCII sentence (UTF-8 bytes)
    (2, 2000, "val", [(4, "whole picture")]),
    (3, 1719311, "testA", [(5, "right guy")]),
    (4, 1719310, "testB", [(6, "left thing")]),
]


def py2_pickle(obj) -> bytes:
    """`obj` pickled as Python 2's cPickle protocol 2 writes it: str as SHORT_BINSTRING/BINSTRING bytes (the UTF-8
    of the text), dicts and lists as EMPTY_DICT/EMPTY_LIST + MARK ... SETITEMS/APPENDS."""
    out = bytearray(b"\x80\x02")

    def enc(o) -> None:
        if isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                enc(k)
                enc(v)
            out.extend(b"u")
        elif isinstance(o, list):
            out.extend(b"](")
            for v in o:
                enc(v)
            out.extend(b"e")
        elif isinstance(o, int):
            out.extend(b"J" + struct.pack("<i", o))  # BININT
        elif isinstance(o, float):
            out.extend(b"G" + struct.pack(">d", o))  # BINFLOAT
        else:
            data = str(o).encode("utf-8")
            out.extend((b"U" + bytes([len(data)])) if len(data) < 256 else (b"T" + struct.pack("<i", len(data))))
            out.extend(data)

    enc(obj)
    out.extend(b".")
    return bytes(out)


def refs_records() -> list[dict]:
    """The refs as refer's refs(unc).p holds them."""
    records = []
    for ref_id, ann_id, split, sents in REFS:
        image_id = REFCOCO_ANNS[ann_id][0]
        records.append({"sent_ids": [s for s, _ in sents], "file_name": f"COCO_train2014_{image_id:012d}_{ref_id}.jpg",
                        "ann_id": ann_id, "ref_id": ref_id, "image_id": image_id, "split": split,
                        "sentences": [{"tokens": sent.split(), "raw": sent.upper(), "sent_id": s, "sent": sent}
                                      for s, sent in sents],
                        "category_id": 1})
    return records


def write_refcoco(root: Path, refs_name: str = "refs(unc).p") -> Path:
    """refer's `data/` layout: `refcoco/{refs_name, instances.json}` + `images/mscoco/images/train2014/`. Returns the
    `refcoco/` folder."""
    folder = root / "refcoco"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / refs_name).write_bytes(py2_pickle(refs_records()))
    images = [{"license": 1, "file_name": f"COCO_train2014_{i:012d}.jpg", "coco_url": "", "height": h, "width": w,
               "date_captured": "2013-11-14 16:28:13", "flickr_url": "", "id": i} for i, (w, h) in REFCOCO_IMAGES.items()]
    anns = [{"segmentation": [[x, y, x + w, y, x + w, y + h]], "area": w * h, "iscrowd": 0, "image_id": i,
             "bbox": [x, y, w, h], "category_id": 1, "id": a} for a, (i, (x, y, w, h)) in REFCOCO_ANNS.items()]
    (folder / "instances.json").write_text(json.dumps(
        {"info": INFO, "images": images, "licenses": [LICENSE], "annotations": anns,
         "categories": [{"supercategory": "person", "id": 1, "name": "person"}]}))
    for i, size in REFCOCO_IMAGES.items():
        jpeg(root / "images" / "mscoco" / "images" / "train2014" / f"COCO_train2014_{i:012d}.jpg", seed=i, size=size)
    return folder


# ---------------------------------------------------------------------------------------------------- SNLI-VE
SNLI_VE = {  # split -> [(Flickr30K_ID, pairID, premise, hypothesis, gold_label)]
    "train": [("3416050480", "3416050480.jpg#4r1n", "A person on a horse jumps over a broken down airplane.",
               "A person is training his horse for a competition.", "neutral"),
              ("3416050480", "3416050480.jpg#4r1c", "A person on a horse jumps over a broken down airplane.",
               "A person is at a diner, ordering an omelette.", "contradiction"),
              ("2267923837", "2267923837.jpg#2r1e", "Children smiling and waving at camera",
               "There are children present", "entailment")],
    "dev": [("4791890474", "4791890474.jpg#0r1e", "Two women are embracing.", "Two women are holding each other.",
             "entailment"),
            ("4791890474", "4791890474.jpg#0r1n", "Two women are embracing.", "The sisters are hugging.",
             "neutral")],
    "test": [("1000092795", "1000092795.jpg#1r1c", "Two young guys with shaggy hair.", "Two men are asleep.",
              "contradiction")],
}


def write_snli_ve(root: Path, images_under: str = "") -> Path:
    """`snli_ve_{split}.jsonl` in `root`, images in `root/{images_under}/flickr30k_images/` (necla-ml's download
    puts them in `data/Flickr30K/`). Returns `root`."""
    root.mkdir(parents=True, exist_ok=True)
    for split, rows in SNLI_VE.items():
        lines = []
        for fid, pair, premise, hypothesis, label in rows:
            rec = {"Flickr30K_ID": fid, "annotator_labels": [label], "captionID": pair.split("r")[0],
                   "gold_label": label, "pairID": pair, "sentence1": premise,
                   "sentence1_binary_parse": "( ... )", "sentence1_parse": "(ROOT ...)", "sentence2": hypothesis,
                   "sentence2_binary_parse": "( ... )", "sentence2_parse": "(ROOT ...)"}
            lines.append(json.dumps(dict(sorted(rec.items()))))
            jpeg(root / images_under / "flickr30k_images" / f"{fid}.jpg", seed=int(fid) % 1000, size=(26, 22))
        (root / f"snli_ve_{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root
