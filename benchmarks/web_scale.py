"""Web-scale distillation, measured (issue 20): a synthetic webdataset of small images and a tiny OFA teacher.

1. peak RSS of `narvl-pipe distill` (the main process and its DataLoader workers together) over the first `--small`
   rows and over all `--rows` rows: bounded memory means the two are within 10%;
2. steady-state rows/s streaming the first `--rate-rows` rows' tars vs the map-style run on the same rows (a
   save_to_disk copy), timed by the harness (`benchmarks/timing.py`: two pinned persistent sides on the same cores,
   their DataLoader workers included, rounds interleaved with the order alternated, the median of paired per-round
   ratios, the same rows checked every round); the steady state is the manifest's `last_run.loop_s` (first row
   read to last shard written: no start-up, no model load);
3. rows lost to a kill -9: the rows the killed run had taken from its DataLoader (its progress bar) minus those its
   flushed parts and finished shards hold, against the flush bound (`--flush-every` per open shard).

    python benchmarks/web_scale.py --out /tmp/web-scale --rows 200000 --small 20000 --shards 100 \
        --rate-rows 8000 --rounds 11 --cores 0,1

`--cores 0,1` gives both sides the same two cores: the DataLoader workers read and decode there while the main
process runs the teacher, as distill runs beside a GPU. On one core (`--cores 1`) the stream's tar reading (~130-230
us/row in `datasets`' webdataset builder, against ~23 for Arrow rows) is taken from the teacher's time.
Figures depend on the machine: run it on a quiet one.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import timing  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "web_scale.json"
WORDS = ["a", "red", "blue", "green", "circle", "square", "on", "the", "left", "right", "small", "large"]


def make_webdataset(out: Path, rows: int, shards: int, size: int, seed: int = 0) -> list[Path]:
    """`shards` img2dataset-style tars (`key.jpg`, `key.txt`, `key.json`) of `rows` random `size`-px images."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    bounds = np.linspace(0, rows, shards + 1).round().astype(int)
    files = []
    for s in range(shards):
        path = out / f"{s:05d}.tar"
        files.append(path)
        if path.exists():
            continue
        with tarfile.open(f"{path}.partial", "w") as tf:
            for k in range(bounds[s + 1] - bounds[s]):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG")
                key = f"{s:05d}{k:04d}"
                caption = " ".join(rng.choice(WORDS, 5))
                for ext, data in (("jpg", buf.getvalue()), ("txt", caption.encode()),
                                  ("json", json.dumps({"key": key, "captions": [caption]}).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        os.replace(f"{path}.partial", path)
    return files


def make_map_style(tars: list[Path], out: Path) -> Path:
    """The same rows as a save_to_disk dataset (the map-style source)."""
    import datasets

    if not out.exists():
        ds = datasets.load_dataset("webdataset", data_files={"train": [str(t) for t in tars]}, split="train")
        ds = ds.map(lambda r: {"id": r["__key__"], "captions": r["json"]["captions"]},
                    remove_columns=["txt", "json", "__url__", "__key__"]).rename_column("jpg", "image")
        datasets.DatasetDict({"train": ds}).save_to_disk(str(out))
    return out


def make_teacher(folder: Path) -> Path:
    """A seeded 1-layer OFA (d_model 32) with a BPE trained on the captions' words."""
    import torch

    from distill.ofa import OFAConfig, OFAModel
    from distill.ofa.image_processing_ofa import OFAImageProcessor
    from distill.ofa.tokenization_ofa import train_tiny_tokenizer

    if (folder / "config.json").exists():
        return folder
    tok = train_tiny_tokenizer([" ".join(WORDS)] * 20 + WORDS, vocab_size=300, num_codes=0, num_bins=16)
    torch.manual_seed(0)
    cfg = OFAConfig(vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                    decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, resnet_type="resnet18",
                    image_bucket_size=4, token_bucket_size=16, max_position_embeddings=64)
    OFAModel(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    OFAImageProcessor(size=32).save_pretrained(folder)
    return folder


def distill_cmd(args, data: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "distill", "--task", "caption", "--teacher", str(args.teacher),
            "--data", data, "--out", str(out), "--batch-size", str(args.batch_size), "--num-beams", "1",
            "--max-new-tokens", "4", "--shard-size", str(args.shard_size), "--flush-every", str(args.flush_every),
            "--num-workers", str(args.workers)]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
                TOKENIZERS_PARALLELISM="false")


def peak_rss(cmd: list[str], interval: float = 0.1) -> tuple[int, int]:
    """(exit code, peak RSS in bytes of the process and all its descendants, sampled every `interval` s)."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(interval)
    return proc.returncode, peak


def side(kind: str, data: str, root: str, teacher: str, batch_size: int, shard_size: int, flush_every: int,
         workers: int):
    """A harness side: `narvl-pipe distill` in this process over `data` (the tars streamed, or their map-style copy);
    its thunk returns the run's steady-state span (`last_run.loop_s` of the manifest) and its (id, target) rows."""
    import shutil
    import tempfile

    import pyarrow.parquet as pq

    from distill.run import DistillConfig, run_distill

    def prepare(case: str):
        def run():
            out = Path(tempfile.mkdtemp(dir=root, prefix=f"{kind}-"))
            run_distill(DistillConfig(task="caption", teacher=teacher, data=data, out=str(out), batch_size=batch_size,
                                      num_beams=1, max_new_tokens=4, shard_size=shard_size, flush_every=flush_every,
                                      num_workers=workers, progress=False))
            m = json.loads((out / "manifest.json").read_text())
            rows = sorted(r for f in sorted((out / "data").glob("*.parquet"))
                          for r in zip(*pq.read_table(f, columns=["id", "target"]).to_pydict().values()))
            shutil.rmtree(out)
            loop_s = m["last_run"]["loop_s"]
            return timing.Timed(loop_s, rows, {"rows": len(rows), "rows_per_s": (m["rows"] + m["failures"]) / loop_s})
        return run

    return prepare


def rows_lost_to_a_kill(args, data: str, out: Path) -> dict:
    """kill -9 once a unit has flushed; lost = rows the run had taken minus rows its parts and shards hold."""
    proc = subprocess.Popen(distill_cmd(args, data, out), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    parts, done = out / ".work" / "parts", out / ".work" / "done"
    while proc.poll() is None and not any(parts.rglob("*.parquet")):
        time.sleep(0.01)
    time.sleep(args.kill_after)
    os.kill(proc.pid, signal.SIGKILL)
    err = proc.communicate()[1]
    taken = max([int(x) for x in re.findall(r"(\d+)row \[", err)] or [0])
    finished = {p.stem for p in done.glob("*.json")}
    kept = sum(json.loads(p.read_text())["source_rows"] for p in done.glob("*.json")) + sum(
        int(p.stem.split("-")[1]) - int(p.stem.split("-")[0]) for p in parts.rglob("*.parquet")
        if p.parent.name not in finished)
    bound = args.flush_every * max(1, args.workers)
    return {"rows_taken": taken, "rows_kept": kept, "rows_lost": max(0, taken - kept), "bound": bound}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--small", type=int, default=20_000)
    p.add_argument("--shards", type=int, default=100)
    p.add_argument("--rate-rows", type=int, default=4000, help="rows (whole tars) of the stream vs map-style pair")
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=2000)
    p.add_argument("--flush-every", type=int, default=512)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--kill-after", type=float, default=1.0, help="seconds after the first flush before kill -9")
    p.add_argument("--results", type=Path, default=RESULTS, help="the JSON written")
    timing.add_args(p)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.teacher = make_teacher(args.out / "teacher")
    tars = make_webdataset(args.out / "wds", args.rows, args.shards, args.size)
    per = args.rows / args.shards
    small = tars[: max(1, round(args.small / per))]
    glob = lambda files: f"{files[0].parent}/{{{files[0].stem}..{files[-1].stem}}}.tar"  # noqa: E731
    result: dict = {"rows": args.rows, "small_rows": round(len(small) * per), "shards": args.shards}

    for name, files in (("small", small), ("all", tars)):
        out = args.out / f"rss-{name}"
        subprocess.run(["rm", "-rf", str(out)])
        code, peak = peak_rss(distill_cmd(args, glob(files), out))
        result[f"peak_rss_{name}_mb"] = round(peak / 2**20, 1)
        result[f"exit_{name}"] = code
        m = json.loads((out / "manifest.json").read_text())  # every source row is in the output (or quarantined)
        result[f"rows_out_{name}"] = m["rows"] + m["failures"]
    result["peak_rss_ratio"] = round(result["peak_rss_all_mb"] / result["peak_rss_small_mb"], 3)

    rate = tars[: max(1, round(args.rate_rows / per))]  # the same tars for both sides
    mapped = make_map_style(rate, args.out / f"map-{len(rate)}")
    work = args.out / "rate"
    subprocess.run(["rm", "-rf", str(work)])
    work.mkdir()
    common = dict(root=str(work), teacher=str(args.teacher), batch_size=args.batch_size, shard_size=args.shard_size,
                  flush_every=args.flush_every, workers=args.workers)
    sides = [timing.Side(k, __file__, "side", dict(common, kind=k, data=d), python_path=[str(REPO)],
                         env={"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
             for k, d in (("stream", glob(rate)), ("map", str(mapped)))]
    stream, mapstyle = timing.Entry("stream", "rate"), timing.Entry("map", "rate")
    with timing.Session(sides, timing.Settings.from_args(args)) as session:
        [pair] = session.run([stream, mapstyle], [timing.Pair("stream vs map-style (steady rows/s)", stream,
                                                              mapstyle, True)])
        timed = session.result()
    for kind, e in (("stream", stream), ("map", mapstyle)):
        result[f"rows_per_s_{kind}"] = round(statistics.median(r["rows_per_s"] for r in timed["info"][e.key]), 1)
    result["rate_rows"] = round(len(rate) * per)
    result["stream_over_map"] = pair
    print(timing.pair_line(pair) + " (goal >= 0.95)")

    out = args.out / "kill"
    subprocess.run(["rm", "-rf", str(out)])
    result["kill"] = rows_lost_to_a_kill(args, glob(small), out)
    print(json.dumps({k: v for k, v in result.items() if k != "stream_over_map"}, indent=1))
    timing.write(args.results, {"benchmark": "web_scale", **result, **timed})
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
