"""What a researcher holds when running `pipelines/paper/*.yaml`, at toy scale: OFA checkpoints in the OFA-Sys Hub
layout (config.json + pytorch_model.bin + vocab.json/merges.txt, no preprocessor or processor config) built from
tiny random OFAs, and the benchmarks in OFA's own TSV layouts (caption stage 1 one caption per line, VQA with
`conf|!+answer` answers and object tags, RefCOCO, SNLI-VE), a Karpathy `dataset_coco.json` with its images, and
OFA's `trainval_ans2label.pkl`."""
from __future__ import annotations

import base64
import io
import json
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from distill.ofa import OFAConfig, OFAModel
from distill.ofa.tokenization_ofa import load_ofa_tokenizer, train_tiny_tokenizer

CAPTIONS = [["a red circle on the left", "a red round shape"], ["two blue squares", "blue squares side by side"],
            ["a green triangle", "one green triangle at the top"], ["a man riding a horse", "a person on a horse"],
            ["a cat on a bed", "a small cat sleeping"], ["a dog in the park", "a brown dog running"]]
QUESTIONS = ["what color is the circle", "how many squares are there", "is there a triangle", "what is the man riding",
             "where is the cat", "what animal is this"]
ANSWERS = ["red", "two", "yes", "horse", "bed", "dog", "no", "blue"]
TAGS = ["circle", "square", "triangle", "man", "horse", "cat", "bed", "dog"]
REGIONS = ["the left circle", "the blue square", "the green triangle", "the man", "the cat", "the dog"]
LABELS = ["entailment", "contradiction", "neutral"]


def image_bytes(seed: int, size: int = 24) -> bytes:
    """A small PNG (non-square: width size + seed % 5)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size + seed % 5, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def b64(seed: int) -> str:
    """OFA's TSV image field: urlsafe base64 of the image file."""
    return base64.urlsafe_b64encode(image_bytes(seed)).decode()


def ofa_sys_folder(out: Path, seed: int) -> Path:
    """A tiny random OFA in the OFA-Sys layout: its BPE as vocab.json + merges.txt (OFA's 8192 codes and 1000 bins
    are appended when loaded), config.json, and the state dict torch-pickled as pytorch_model.bin."""
    texts = [w for group in CAPTIONS for w in group] + QUESTIONS + ANSWERS + TAGS + REGIONS + LABELS
    tok = train_tiny_tokenizer(texts * 10, vocab_size=400, num_codes=0, num_bins=0)
    backend = json.loads(tok.backend_tokenizer.to_str())["model"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(backend["vocab"]))
    merges = [" ".join(m) if isinstance(m, list) else m for m in backend["merges"]]
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    vocab_size = len(load_ofa_tokenizer(out))
    torch.manual_seed(seed)
    config = OFAConfig(vocab_size=vocab_size, d_model=32, encoder_layers=1, decoder_layers=1,
                       encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                       resnet_type="resnet18", image_bucket_size=42, max_position_embeddings=256)
    config.to_json_file(out / "config.json")
    torch.save(OFAModel(config).state_dict(), out / "pytorch_model.bin")
    return out


def karpathy(root: Path) -> Path:
    """`root/dataset_coco.json` naming `root/val2014/*.png`: 3 train, 1 restval, 2 val, 2 test images with 2
    captions each (one row per image)."""
    (root / "val2014").mkdir(parents=True, exist_ok=True)
    splits = ["train", "train", "train", "restval", "val", "val", "test", "test"]
    images = []
    for i, split in enumerate(splits):
        (root / "val2014" / f"COCO_val2014_{i:012d}.png").write_bytes(image_bytes(i))
        caps = CAPTIONS[i % len(CAPTIONS)]
        images.append({"filepath": "val2014", "filename": f"COCO_val2014_{i:012d}.png", "imgid": i, "cocoid": 100 + i,
                       "split": split, "sentences": [{"raw": c.capitalize() + ".", "tokens": c.split()} for c in caps]})
    (root / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    return root


def caption_tsvs(root: Path) -> Path:
    """OFA's caption_data: caption_stage1_train.tsv lists every caption of the 4 training images on its own line
    (uniq-id per caption, image-id, caption, object labels, image); caption_val/test.tsv join an image's captions
    with `&&` on one line."""
    root.mkdir(parents=True, exist_ok=True)
    lines, uniq = [], 0
    for i in range(4):
        for caption in CAPTIONS[i % len(CAPTIONS)]:
            lines.append(f"{uniq}\t{100 + i}\t{caption}\t{TAGS[i]}\t{b64(i)}")
            uniq += 1
    (root / "caption_stage1_train.tsv").write_text("\n".join(lines) + "\n")
    for name, idx in (("val", (4, 5)), ("test", (6, 7))):
        rows = [f"{100 + i}\t{100 + i}\t{'&&'.join(CAPTIONS[i % len(CAPTIONS)])}\t{TAGS[i]}\t{b64(i)}" for i in idx]
        (root / f"caption_{name}.tsv").write_text("\n".join(rows) + "\n")
    return root


def vqa_tsvs(root: Path) -> dict[str, Path]:
    """OFA's vqa_data: question-id, image-id, question, `conf|!+answer&&...`, `&&`-joined object tags, image; and
    `trainval_ans2label.pkl` (answer -> label, plain ints)."""
    root.mkdir(parents=True, exist_ok=True)

    def row(i: int) -> str:
        a, b = ANSWERS[i % len(ANSWERS)], ANSWERS[(i + 6) % len(ANSWERS)]
        return (f"{300 + i}\t{100 + i}\t{QUESTIONS[i % len(QUESTIONS)]}?\t1.0|!+{a}&&0.3|!+{b}\t"
                f"{TAGS[i]}&&{TAGS[(i + 1) % len(TAGS)]}\t{b64(i)}")

    (root / "vqa_train.tsv").write_text("\n".join(row(i) for i in range(4)) + "\n")
    (root / "vqa_val.tsv").write_text("\n".join(row(i) for i in (4, 5)) + "\n")
    with (root / "trainval_ans2label.pkl").open("wb") as fh:
        pickle.dump({a: i for i, a in enumerate(ANSWERS)}, fh)
    return {"train": root / "vqa_train.tsv", "val": root / "vqa_val.tsv", "answers": root / "trainval_ans2label.pkl"}


def refcoco_tsvs(root: Path) -> dict[str, Path]:
    """OFA's refcoco data: uniq-id, image-id, text, region-coord `x0,y0,x1,y1` (original pixels), image."""
    root.mkdir(parents=True, exist_ok=True)

    def row(i: int) -> str:
        return f"{400 + i}\t{100 + i}\t{REGIONS[i % len(REGIONS)]}\t{2 + i},{3},{14 + i % 5},{20}\t{b64(i)}"

    (root / "refcoco_train.tsv").write_text("\n".join(row(i) for i in range(4)) + "\n")
    (root / "refcoco_val.tsv").write_text("\n".join(row(i) for i in (4, 5)) + "\n")
    return {"train": root / "refcoco_train.tsv", "val": root / "refcoco_val.tsv"}


def snli_ve_tsvs(root: Path) -> dict[str, Path]:
    """OFA's snli_ve data: uniq-id, image-id, image, hypothesis, caption (premise), label."""
    root.mkdir(parents=True, exist_ok=True)

    def row(i: int) -> str:
        return (f"{500 + i}\t{100 + i}\t{b64(i)}\t{CAPTIONS[(i + 1) % len(CAPTIONS)][0]}\t"
                f"{CAPTIONS[i % len(CAPTIONS)][1]}\t{LABELS[i % 3]}")

    (root / "snli_ve_train.tsv").write_text("\n".join(row(i) for i in range(4)) + "\n")
    (root / "snli_ve_dev.tsv").write_text("\n".join(row(i) for i in (4, 5)) + "\n")
    return {"train": root / "snli_ve_train.tsv", "dev": root / "snli_ve_dev.tsv"}
