"""The benchmarks in the files their owners ship (DESIGN.md section 7), read into the canonical row schema.

One reader per format, each a `datasets.Dataset.from_generator` over the owner's files (cached by `datasets`, keyed
by the files' paths, sizes and mtimes) with the columns of its task's `column_features()`; images stay paths, read
later (a missing image file is a quarantined row, not an error):
- COCO-Karpathy `dataset_coco.json` (caption): one row per image of the split, `id` = `cocoid` (else `imgid`),
  `captions` = the raw sentences, images `image_root/filepath/filename` (`image_root`: the JSON's folder).
- VQAv2 (vqa), as GT-Vision-Lab/VQA's `vqa.py` reads it: `v2_OpenEnded_mscoco_{sub}_questions.json` +
  `v2_mscoco_{sub}_annotations.json` (in one folder, or the official `Questions/` + `Annotations/`); one row per
  question, `id` = `question_id`, `answers` = the 10 human answers that vqaEval scores; images
  `{sub}/COCO_{sub}_%012d.jpg` (test-dev2015 reads test2015's). Test splits have no annotations: `answers` is [].
- RefCOCO / RefCOCO+ / RefCOCOg (grounding), as lichengunc/refer's `refer.py` reads them: `refs(unc|umd|google).p`
  (a Python 2 pickle, read as data only) + `instances.json` beside it; one row per (ref, sentence), `id` =
  `{ref_id}-{sent_id}`, `region_text` = `sent`, `box` = the annotation's [x, y, w, h] as [x0, y0, x1, y1]; images
  COCO `train2014/` named by `instances.json`. Splits as refer's `getRefIds`: `test` = every test split,
  `testA`/`testB` = those holding the letter.
- SNLI-VE (entailment), as necla-ml/SNLI-VE writes it: `snli_ve_{train,dev,test}.jsonl`; `id` = `pairID`, `premise`
  = `sentence1`, `hypothesis` = `sentence2`, `label` = `gold_label`; images `flickr30k_images/{Flickr30K_ID}.jpg`.

A file is recognised by its content (`file_kind`: the JSON keys or pickle fields of its first MiB), a folder by the
owners' file names. The image folder is looked up under `image_root` (or is `image_root` itself), else beside the
files and in the owners' layouts (`_image_folder`). `split` names the owner's split or an alias (`SPLIT_ALIASES`).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from datasets import Dataset, Features, Image, Value

from distill.errors import UserError
from distill.pickles import load_data_pickle
from distill.tasks import get_task

OWNER_FILES = ("COCO-Karpathy dataset_coco.json, VQAv2 v2_OpenEnded_mscoco_<split>_questions.json, "
               "RefCOCO refs(unc).p, SNLI-VE snli_ve_<split>.jsonl")
"""The owner formats, as the error messages name them."""

SPLIT_ALIASES: dict[str, Mapping[str, str]] = {
    "vqa_questions": {"train": "train2014", "val": "val2014", "validation": "val2014", "test": "test2015",
                      "test-dev": "test-dev2015"},
    "refs": {"validation": "val"},
    "snli_ve": {"validation": "dev", "val": "dev"},
}
"""The split names the CLI defaults use (`train`, `validation`) -> each owner's own."""

_SNIFF_BYTES = 1 << 20
_JSON_SIGNATURES = (  # (kind, JSON keys the first MiB holds); the first match wins
    ("vqa_questions", ("questions", "question_id", "question", "image_id")),
    ("vqa_annotations", ("annotations", "question_id", "answers")),
    ("karpathy", ("images", "sentences")),
    ("coco_instances", ("images", "annotations", "bbox")),
    ("snli_ve", ("sentence2", "gold_label", "pairID")),
)
_JSON_KEY = re.compile(r'"([^"\\]+)"\s*:')
_REFS_FIELDS = (b"ref_id", b"ann_id", b"sentences")
_REF_KEYS = {"ref_id", "ann_id", "image_id", "split", "sentences"}
_VQA_QUESTIONS = re.compile(r"^(.*?)OpenEnded_mscoco_(.+)_questions\.json$")
_VQA_SUBTYPE = re.compile(rb'"data_subtype"\s*:\s*"([^"]+)"')
_SNLI_VE_FILE = re.compile(r"^snli_ve_(.+)\.jsonl$")
_POINT_ELSEWHERE = {
    "vqa_annotations": "VQAv2 annotations: point `data` at its questions file "
                       "(v2_OpenEnded_mscoco_<split>_questions.json) or their folder",
    "coco_instances": "a COCO instances file: for RefCOCO/+/g point `data` at the refs(unc).p (refs(umd).p, "
                      "refs(google).p) beside it, or their folder",
}


def file_kind(path: Path) -> str | None:
    """What a file holds, from its first MiB: a `_JSON_SIGNATURES` kind, `refs` (a refer pickle), or None."""
    with open(path, "rb") as fh:
        head = fh.read(_SNIFF_BYTES)
    if head.lstrip()[:1] in (b"{", b"["):
        keys = set(_JSON_KEY.findall(head.decode("utf-8", errors="replace")))
        return next((kind for kind, need in _JSON_SIGNATURES if keys.issuperset(need)), None)
    if head[:1] in (b"\x80", b"(", b"]", b"}") and all(f in head for f in _REFS_FIELDS):  # pickle protocols 0-5
        return "refs"
    return None


def folder_kind(path: Path) -> str | None:
    """Which owner format a folder holds, by the owners' file names."""
    if (path / "dataset_coco.json").is_file():
        return "karpathy"
    if _vqa_question_files(path):
        return "vqa_questions"
    if any(path.glob("refs(*).p")):
        return "refs"
    if any(path.glob("snli_ve_*.jsonl")):
        return "snli_ve"
    return None


def open_owner_format(path: Path, split: str, image_root: str | None):
    """`path` (a file or folder) read as its owner format, as a `Dataset`; None when it is none of them."""
    kind = folder_kind(path) if path.is_dir() else file_kind(path)
    if kind in _POINT_ELSEWHERE:
        raise UserError(f"{path} is {_POINT_ELSEWHERE[kind]}")
    reader = _READERS.get(kind)
    return reader(path, split, image_root) if reader else None


# ---------------------------------------------------------------------------------------------------- shared parts
def file_stamp(path: Path) -> tuple:
    """Path, size and mtime: the generator's cache key changes when a file does. (Tuples: `from_generator` would
    shard list-valued kwargs.)"""
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def _read_json(path: str | Path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def available(names) -> str:
    """Names for an error message: sorted, comma-separated."""
    return ", ".join(sorted(str(n) for n in names)) or "(none)"


def _generate(rows_fn, gen_kwargs: dict, task_name: str, columns: Sequence[str]):
    """`Dataset.from_generator` with `id`, `image` (paths, decoded later) and `columns` typed as the task's."""
    feats = get_task(task_name).column_features()
    features = Features({"id": Value("string"), "image": Image(decode=False), **{c: feats[c] for c in columns}})
    return Dataset.from_generator(rows_fn, gen_kwargs=gen_kwargs, features=features)


def _image_folder(name: str, image_root: str | None, roots: Sequence[Path], layouts: Sequence[str],
                  owner: Path) -> str:
    """The benchmark's image folder `name` (COCO's `train2014`, `flickr30k_images`): `image_root/name`, or
    `image_root` itself; without `image_root`, the first of `root/name`, `root/layout/name` that exists."""
    if image_root is not None:
        root = Path(image_root)
        if not root.is_dir():
            raise UserError(f"`image_root` {image_root} is not a folder")
        return os.path.abspath(root / name if (root / name).is_dir() else root)
    tried = list(dict.fromkeys(root / layout / name for root in roots for layout in ("", *layouts)))
    found = next((p for p in tried if p.is_dir()), None)
    if found is None:
        raise UserError(f"{owner}: its image folder {name}/ is not in {', '.join(str(p.parent) for p in tried)}; "
                        f"pass `image_root` (the folder holding {name}/)")
    return os.path.abspath(found)


def _image(image_dir: str, name: str | None) -> dict:
    """An image column value: the file's path, or no image (empty bytes: the row is quarantined when read)."""
    return {"bytes": None, "path": os.path.join(image_dir, name)} if name else {"bytes": b"", "path": None}


def _check_kind(path: Path, kind: str, what: str) -> None:
    if file_kind(path) != kind:
        raise UserError(f"{path} is not {what}")


# ---------------------------------------------------------------------------------------------------- COCO-Karpathy
def _karpathy_rows(json_file: tuple, image_root: str, split: str) -> Iterator[dict]:
    for img in _read_json(json_file[0])["images"]:
        if img.get("split") == split:
            yield {"id": str(img.get("cocoid", img.get("imgid"))),
                   "image": {"bytes": None, "path": os.path.join(image_root, img.get("filepath", ""), img["filename"])},
                   "captions": [s.get("raw", " ".join(s.get("tokens", []))) for s in img.get("sentences", [])]}


def open_karpathy(path: Path, split: str, image_root: str | None):
    """A COCO-Karpathy `dataset_coco.json` (or the folder holding it): the images of `split` (train, val, test,
    restval)."""
    json_path = path / "dataset_coco.json" if path.is_dir() else path
    data = _read_json(json_path)
    if not isinstance(data, dict) or "images" not in data:
        raise UserError(f"{json_path} is not a COCO-Karpathy file (no 'images' list)")
    splits = {img.get("split") for img in data["images"]}
    if split not in splits:
        raise UserError(f"split '{split}' not found in {json_path}; available: {available(splits)}")
    root = str(Path(image_root) if image_root else json_path.parent)
    return _generate(_karpathy_rows, {"json_file": file_stamp(json_path), "image_root": root, "split": split},
                     "caption", ("captions",))


# ---------------------------------------------------------------------------------------------------- VQAv2
def _vqa_question_files(folder: Path) -> dict[str, Path]:
    """data_subtype -> questions file (v2 before v1), in `folder` or its `Questions/` (the official layout)."""
    found: dict[str, Path] = {}
    for where in (folder, folder / "Questions"):
        for f in sorted(where.glob("*OpenEnded_mscoco_*_questions.json"), key=lambda f: not f.name.startswith("v2_")):
            if m := _VQA_QUESTIONS.match(f.name):
                found.setdefault(m.group(2), f)
    return found


def _vqa_subtype(questions: Path) -> str:
    """A questions file's split (`data_subtype`): from the official file name, else from the file."""
    if m := _VQA_QUESTIONS.match(questions.name):
        return m.group(2)
    with open(questions, "rb") as fh:
        m = _VQA_SUBTYPE.search(fh.read(_SNIFF_BYTES))
    if not m:
        raise UserError(f"{questions}: no data_subtype (its split, e.g. val2014) in the file or its name "
                        "(v2_OpenEnded_mscoco_<split>_questions.json)")
    return m.group(1).decode("utf-8")


def _vqa_rows(questions: tuple, annotations: tuple | None, image_dir: str, image_prefix: str) -> Iterator[dict]:
    answers = {}
    if annotations:
        answers = {a["question_id"]: [h["answer"] for h in a["answers"]]
                   for a in _read_json(annotations[0])["annotations"]}
    for q in _read_json(questions[0])["questions"]:
        image = os.path.join(image_dir, f"{image_prefix}{int(q['image_id']):012d}.jpg")
        yield {"id": str(q["question_id"]), "question": q["question"], "answers": answers.get(q["question_id"], []),
               "image": {"bytes": None, "path": image}}


def open_vqav2(path: Path, split: str, image_root: str | None):
    """VQAv2 questions (+ annotations) of `split`: a folder holding them, or one questions file (its own split)."""
    want = SPLIT_ALIASES["vqa_questions"].get(split, split)
    if path.is_dir():
        files = _vqa_question_files(path)
        if want not in files:
            raise UserError(f"split '{split}' not found in {path} (VQAv2 files "
                            f"v2_OpenEnded_mscoco_<split>_questions.json); available: {available(files)}")
        questions, sub = files[want], want
        _check_kind(questions, "vqa_questions", "a VQAv2 questions file")
    else:
        questions, sub = path, _vqa_subtype(path)
        if want != sub:
            raise UserError(f"split '{split}' not found in {path}; available: {sub}")
    here = questions.parent
    data_dir = here.parent if here.name == "Questions" else here
    m = _VQA_QUESTIONS.match(questions.name)
    ann_name = f"{m.group(1) if m else 'v2_'}mscoco_{sub}_annotations.json"
    found = [d / ann_name for d in (here, data_dir / "Annotations") if (d / ann_name).is_file()]
    annotations = None
    if found:
        annotations = found[0]
        _check_kind(annotations, "vqa_annotations", "a VQAv2 annotations file")
    elif not sub.startswith("test"):  # the test splits ship questions only
        raise UserError(f"{questions.name} needs its answers {ann_name} beside it (or in "
                        f"{data_dir / 'Annotations'}); not found in {here}")
    image_sub = "test2015" if sub.startswith("test") else sub  # test-dev2015 is a subset of test2015's images
    image_dir = _image_folder(image_sub, image_root, (data_dir, data_dir.parent), ("Images/mscoco",), questions)
    kwargs = {"questions": file_stamp(questions), "annotations": annotations and file_stamp(annotations),
              "image_dir": image_dir, "image_prefix": f"COCO_{image_sub}_"}
    return _generate(_vqa_rows, kwargs, "vqa", ("question", "answers"))


# ---------------------------------------------------------------------------------------------------- RefCOCO/+/g
def _refer_split_matches(split: str, ref_split: str) -> bool:
    """refer.py `getRefIds(split=...)`: testA/testB/testC keep the refs whose split holds that letter, `test` every
    test split, any other name its own."""
    if split in ("testA", "testB", "testC"):
        return split[-1] in ref_split
    if split == "test":
        return "test" in ref_split
    return ref_split == split


def _refer_rows(refs_file: tuple, instances: tuple, image_dir: str, split: str) -> Iterator[dict]:
    coco = _read_json(instances[0])
    files = {img["id"]: img["file_name"] for img in coco["images"]}
    boxes = {ann["id"]: ann["bbox"] for ann in coco["annotations"]}
    for ref in load_data_pickle(refs_file[0], "refs"):
        if not _refer_split_matches(split, str(ref["split"])):
            continue
        xywh = boxes.get(ref["ann_id"])  # refer.py getRefBox: the annotation's [x, y, w, h]
        box = None if xywh is None else [float(xywh[0]), float(xywh[1]), float(xywh[0]) + float(xywh[2]),
                                         float(xywh[1]) + float(xywh[3])]
        name = files.get(ref["image_id"])
        for sent in ref["sentences"]:
            yield {"id": f"{ref['ref_id']}-{sent['sent_id']}", "region_text": sent["sent"], "box": box,
                   "image": _image(image_dir, name)}


def open_refer(path: Path, split: str, image_root: str | None):
    """A refer `refs(...).p` (or the folder holding one) + its `instances.json`: the rows of `split`."""
    if path.is_dir():
        found = sorted(path.glob("refs(*).p"))
        if len(found) > 1:
            raise UserError(f"{path} holds {', '.join(f.name for f in found)}: point `data` at one of them")
        path = found[0]
    instances = path.parent / "instances.json"
    if not instances.is_file():
        raise UserError(f"{path.name} needs instances.json beside it (the COCO-style boxes of the same dataset); "
                        f"not found in {path.parent}")
    refs = load_data_pickle(path, "refs")
    if not isinstance(refs, list) or not all(isinstance(r, dict) and _REF_KEYS <= r.keys() for r in refs):
        raise UserError(f"{path} is not a refer refs file (a list of refs with {', '.join(sorted(_REF_KEYS))})")
    coco = _read_json(instances)
    if not isinstance(coco, dict) or not {"images", "annotations"} <= coco.keys():
        raise UserError(f"{instances} is not a COCO instances file (no 'images' and 'annotations')")
    want = SPLIT_ALIASES["refs"].get(split, split)
    if not any(_refer_split_matches(want, str(r["split"])) for r in refs):
        raise UserError(f"split '{split}' not found in {path}; available: {available({r['split'] for r in refs})}")
    image_dir = _image_folder("train2014", image_root, (path.parent, path.parent.parent), ("images/mscoco/images",),
                              path)
    kwargs = {"refs_file": file_stamp(path), "instances": file_stamp(instances), "image_dir": image_dir, "split": want}
    return _generate(_refer_rows, kwargs, "grounding", ("region_text", "box"))


# ---------------------------------------------------------------------------------------------------- SNLI-VE
def _snli_ve_rows(jsonl: tuple, image_dir: str) -> Iterator[dict]:
    name = Path(jsonl[0]).name
    with open(jsonl[0], encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:  # a malformed line: a row without image or text, quarantined later
                rec = {}
            image = str(rec.get("Flickr30K_ID", rec.get("Flikr30kID", "")))  # the older files spell it Flikr30kID
            image = image if image.endswith(".jpg") else f"{image}.jpg"
            yield {"id": str(rec.get("pairID", f"{name}:{lineno}")), "premise": rec.get("sentence1", ""),
                   "hypothesis": rec.get("sentence2", ""), "label": rec.get("gold_label", ""),
                   "image": _image(image_dir, image if rec else None)}


def open_snli_ve(path: Path, split: str, image_root: str | None):
    """SNLI-VE `snli_ve_<split>.jsonl` of a folder, or one such file (its own split when its name says it)."""
    want = SPLIT_ALIASES["snli_ve"].get(split, split)
    if path.is_dir():
        files = {m.group(1): f for f in sorted(path.glob("snli_ve_*.jsonl")) if (m := _SNLI_VE_FILE.match(f.name))}
        if want not in files:
            raise UserError(f"split '{split}' not found in {path} (files snli_ve_<split>.jsonl); "
                            f"available: {available(files)}")
        path = files[want]
        _check_kind(path, "snli_ve", "an SNLI-VE jsonl file")
    elif (m := _SNLI_VE_FILE.match(path.name)) and m.group(1) != want:
        raise UserError(f"split '{split}' not found in {path}; available: {m.group(1)}")
    image_dir = _image_folder("flickr30k_images", image_root, (path.parent, path.parent.parent), ("Flickr30K",), path)
    return _generate(_snli_ve_rows, {"jsonl": file_stamp(path), "image_dir": image_dir}, "entailment",
                     ("premise", "hypothesis", "label"))


_READERS = {"karpathy": open_karpathy, "vqa_questions": open_vqav2, "refs": open_refer, "snli_ve": open_snli_ve}
