"""The shapes world as webdataset tar shards, laid out as img2dataset writes them (`--output_format webdataset`):

    OUT/00000.tar            key.jpg (JPEG, quality 95), key.txt (one caption), key.json (img2dataset's sample
                             metadata + every canonical column of the row: id, captions, question, answers, box, ...)
    OUT/00000_stats.json     the shard's counts (img2dataset's stats file: a shard is done when it exists)
    OUT/00000.parquet        the shard's sample metadata, one row per sample (img2dataset's metadata parquet)

Keys are `{shard:05d}{sample:04d}`, as img2dataset numbers them. `narvl-pipe distill --data OUT/{00000..0000N}.tar`
(or `OUT/*.tar`) streams it; the rows equal the save_to_disk world's (`distill.shapes`) but for the images,
which are JPEG here.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from distill.errors import UserError
from distill.shapes import ShapesConfig, generate_example

JPEG_QUALITY = 95  # img2dataset's default encode_quality


def _member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0  # fixed mtime: the same world gives byte-identical tars
    tf.addfile(info, io.BytesIO(data))


def shapes_samples(config: ShapesConfig, split: str, lo: int, hi: int, shard: int):
    """(key, jpeg bytes, caption, metadata) of rows [lo, hi) of `split`."""
    for k, index in enumerate(range(lo, hi)):
        example = generate_example(config, split, index)
        buf = io.BytesIO()
        example.image.save(buf, format="JPEG", quality=JPEG_QUALITY)
        jpeg, key = buf.getvalue(), f"{shard:05d}{k:04d}"
        w, h = example.image.size
        meta = {"key": key, "caption": example.row["captions"][0], "url": None, "status": "success",
                "error_message": None, "width": w, "height": h, "original_width": w, "original_height": h,
                "sha256": hashlib.sha256(jpeg).hexdigest(), **example.row}
        yield key, jpeg, example.row["captions"][0], meta


def write_shapes_webdataset(out: str | Path, config: ShapesConfig, shards: int, split: str = "train") -> Path:
    """Write `config.n_train` rows of `split` (or its size for the other splits) as `shards` tar shards."""
    config.validate()
    n = {"train": config.n_train, "validation": config.n_val, "test": config.n_test}[split]
    if shards < 1 or shards > max(n, 1):
        raise UserError(f"`shards` must be in 1..{max(n, 1)} (one row at least per shard), got {shards}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bounds = [round(i * n / shards) for i in range(shards + 1)]
    for shard in range(shards):
        t0, rows = time.time(), []
        tmp = out / f".{shard:05d}.tar.partial"
        with tarfile.open(tmp, "w") as tf:
            for key, jpeg, caption, meta in shapes_samples(config, split, bounds[shard], bounds[shard + 1], shard):
                _member(tf, f"{key}.jpg", jpeg)
                _member(tf, f"{key}.txt", caption.encode("utf-8"))
                _member(tf, f"{key}.json", json.dumps(meta).encode("utf-8"))
                rows.append({k: meta[k] for k in ("key", "url", "caption", "status", "error_message", "width",
                                                  "height", "original_width", "original_height", "sha256")})
        tmp.replace(out / f"{shard:05d}.tar")
        pq.write_table(pa.Table.from_pylist(rows), out / f"{shard:05d}.parquet")
        stats = {"count": len(rows), "successes": len(rows), "failed_to_download": 0, "failed_to_resize": 0,
                 "duration": round(time.time() - t0, 3), "status_dict": {"success": len(rows)}}
        (out / f"{shard:05d}_stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    return out
