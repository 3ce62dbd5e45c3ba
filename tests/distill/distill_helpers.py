"""Tiny teacher + tiny datasets for the distill tests (a real OFAModel, a real trained tokenizer, real `datasets`)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

WORDS = ["a red circle", "a blue square", "two green triangles", "what color is the circle", "is there a square",
         "the left shape", "red", "blue", "green", "yes", "no", "maybe", "a shape on the right"]
REPO = Path(__file__).resolve().parents[2]


def make_teacher(folder: Path, resolution: int = 32, seed: int = 0, max_positions: int = 64,
                 texts: tuple[str, ...] = ()) -> Path:
    """A seeded 1-layer OFA (d_model 32, resnet18 stem) + a BPE trained here (on `WORDS` and `texts`) + an image
    processor, saved to `folder`. `max_positions` bounds the prompt length in tokens."""
    import torch

    from distill.ofa.image_processing_ofa import OFAImageProcessor
    from distill.ofa import OFAConfig, OFAModel
    from distill.ofa.tokenization_ofa import train_tiny_tokenizer

    tok = train_tiny_tokenizer(WORDS * 20 + list(texts), vocab_size=300, num_codes=0, num_bins=16)
    torch.manual_seed(seed)
    cfg = OFAConfig(vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                    decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, resnet_type="resnet18",
                    image_bucket_size=4, token_bucket_size=16, max_position_embeddings=max_positions)
    model = OFAModel(cfg).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    OFAImageProcessor(size=resolution).save_pretrained(folder)
    return folder


def png_bytes(seed: int, size: int = 24) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (size, size + seed % 5, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_rows(n: int, task: str = "caption", bad: dict[int, str] | None = None) -> list[dict]:
    """Canonical rows; `bad` maps a row index to 'corrupt' (garbage bytes) or 'empty' (empty question)."""
    rows = []
    for i in range(n):
        row = {"id": f"img{i:04d}", "image": {"bytes": png_bytes(i), "path": None}}
        if task == "caption":
            row["captions"] = [WORDS[i % 3], WORDS[(i + 1) % 3]]
        elif task == "vqa":
            row["question"] = WORDS[3 + i % 2]
            row["answers"] = [WORDS[6 + i % 3]] * 3
        elif task == "grounding":
            row["region_text"] = WORDS[5]
            row["box"] = [1.0, 2.0, 10.0, 12.0]
        else:
            row["premise"], row["hypothesis"], row["label"] = WORDS[0], WORDS[1 + i % 2], "entailment"
        kind = (bad or {}).get(i)
        if kind == "corrupt":
            row["image"] = {"bytes": b"not an image at all", "path": None}
        elif kind == "empty":
            row["question"] = "  "
        rows.append(row)
    return rows


def make_dataset(n: int, task: str = "caption", bad: dict[int, str] | None = None):
    from datasets import Dataset, Features, Image, List, Value

    feats = {"id": Value("string"), "image": Image()}
    feats.update({"caption": {"captions": List(Value("string"))},
                  "vqa": {"question": Value("string"), "answers": List(Value("string"))},
                  "grounding": {"region_text": Value("string"), "box": List(Value("float64"))},
                  "entailment": {"premise": Value("string"), "hypothesis": Value("string"), "label": Value("string")}}[task])
    return Dataset.from_list(make_rows(n, task, bad), features=Features(feats))


def load_out(out):
    """A distill output's rows as `datasets` reads the parquet shards (in shard order), images undecoded."""
    from datasets import Image, load_dataset

    files = sorted(str(p) for p in (Path(out) / "data").glob("*.parquet"))
    ds = load_dataset("parquet", data_files={"train": files}, split="train")
    return ds.cast_column("image", Image(decode=False)) if "image" in ds.column_names else ds


def rows_done(out) -> int:
    """Rows a resume must not generate again: those of complete units and those of flushed parts."""
    import json

    import pyarrow.parquet as pq

    work = Path(out) / ".work"
    markers = list((work / "done").glob("*.json"))
    finished = {p.stem for p in markers}  # a unit killed between its marker and the removal of its parts
    return sum(json.loads(p.read_text())["rows"] for p in markers) + sum(
        pq.read_metadata(p).num_rows for p in (work / "parts").rglob("*.parquet") if p.parent.name not in finished)


def cli_env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


def cli(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    """`narvl-pipe distill ...` in a subprocess (the real console entry point)."""
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "distill", *args], capture_output=True, text=True,
                          env=cli_env(), cwd=REPO, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"distill failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def without_root_override() -> None:
    """`preexec_fn` for a subprocess that must see permissions as a normal user does: as root, drop the capabilities
    that bypass them (CAP_DAC_OVERRIDE 1, CAP_DAC_READ_SEARCH 2) from the bounding set, so after exec a `chmod a-w`
    folder is read-only for it too. Nothing to do for a non-root user."""
    if os.geteuid() != 0:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")
