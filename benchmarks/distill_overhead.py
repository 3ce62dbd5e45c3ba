"""Overhead of `narvl-pipe distill` over a bare `generate()` loop, and its memory growth with the row count.

Both sides run the same tiny teacher over the same batches (caption task, OFA's beam 5 / 16 tokens / no-repeat 3,
the same batch size; batches never cross shards, and the row count is a multiple of the shard size):
- bare: open the dataset, load the model, then for each batch decode + preprocess the images, tokenise the prompt,
  `generate()` under `torch.inference_mode()`; results kept in a Python list, nothing written;
- distill: `run_distill(DistillConfig(...))`: the same plus DataLoader workers, shards, flushes, manifest, assembly.
Each measurement runs in its own subprocess (same thread settings), timing from just before the source is opened to
the end; peak RSS is that process's VmHWM (`resource.getrusage` where /proc is missing). DataLoader workers are
separate processes and are not counted.

    python benchmarks/distill_overhead.py [--rows 96] [--batch-size 16] [--repeats 2]

Goals (issue 3): distill throughput >= 0.9x the bare loop; peak RSS at 10x rows <= 1.2x that at 1x.
Writes benchmarks/results/distill_overhead.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "distill_overhead.json"
PROMPT = " what does the image describe?"


def build(root: Path, rows: int, size: int = 64) -> None:
    """Teacher (d_model 64, 2+2 layers, resnet18 stem, 64 px) and `rows` random images with captions."""
    import io

    import numpy as np
    import torch
    from datasets import Dataset, Features, Image, List, Value
    from PIL import Image as PILImage

    from distill.image_processing import OFAImageProcessor
    from distill.ofa import OFAConfig, OFAModel
    from distill.tokenizer import train_tiny_tokenizer

    words = ["a red circle", "a blue square", "two green triangles on the left", "a small yellow star"]
    teacher = root / "teacher"
    if not teacher.exists():
        tok = train_tiny_tokenizer(words * 50, vocab_size=400, num_codes=0, num_bins=32)
        torch.manual_seed(0)
        cfg = OFAConfig(vocab_size=len(tok), d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, resnet_type="resnet18",
                        image_bucket_size=8, token_bucket_size=32, max_position_embeddings=128)
        OFAModel(cfg).save_pretrained(teacher)
        tok.save_pretrained(teacher)
        OFAImageProcessor(size=size).save_pretrained(teacher)
    rng = np.random.default_rng(0)

    def png(i):
        buf = io.BytesIO()
        PILImage.fromarray(rng.integers(0, 255, (size + i % 7, size, 3), dtype=np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    feats = Features({"id": Value("string"), "image": Image(), "captions": List(Value("string"))})
    Dataset.from_list([{"id": f"r{i:06d}", "image": {"bytes": png(i), "path": None}, "captions": [words[i % 4]]}
                       for i in range(rows)], features=feats).save_to_disk(str(root / f"src{rows}"))


def measure(kind: str, root: Path, rows: int, batch_size: int, shard_size: int, workers: int) -> dict:
    """One measurement, inside its own process."""
    import torch

    from distill.run import DistillConfig, run_distill

    src, teacher = root / f"src{rows}", root / "teacher"
    t0 = time.perf_counter()
    if kind == "distill":
        out = Path(tempfile.mkdtemp(dir=root))
        summary = run_distill(DistillConfig(task="caption", teacher=str(teacher), data=str(src), out=str(out),
                                            batch_size=batch_size, shard_size=shard_size, num_workers=workers,
                                            progress=False))
        assert summary.rows == rows
    else:
        from datasets import Image, load_from_disk

        from distill.image_processing import OFAImageProcessor, load_image
        from distill.ofa import OFAModel
        from distill.tokenizer import load_ofa_tokenizer

        ds = load_from_disk(str(src)).cast_column("image", Image(decode=False))
        model = OFAModel.from_pretrained(str(teacher)).eval()
        tok, proc = load_ofa_tokenizer(teacher), OFAImageProcessor.from_pretrained(str(teacher))
        results = []
        with torch.inference_mode():
            for lo in range(0, rows, batch_size):
                batch = ds[lo: lo + batch_size]
                pix = torch.stack([torch.from_numpy(proc.process_image(load_image(im))) for im in batch["image"]])
                ids = tok([PROMPT] * len(pix), return_tensors="pt")["input_ids"]
                out = model.generate(input_ids=ids, patch_images=pix, num_beams=5, max_new_tokens=16,
                                     no_repeat_ngram_size=3, output_scores=True, return_dict_in_generate=True)
                results += tok.batch_decode(out.sequences, skip_special_tokens=True)
        assert len(results) == rows
    seconds = time.perf_counter() - t0
    return {"kind": kind, "rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """Peak RSS of this process: Linux VmHWM (per address space, so not inherited from the parent across fork/exec
    the way `ru_maxrss` is), else `resource.getrusage(RUSAGE_SELF).ru_maxrss`."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sub(kind, root, rows, args) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(REPO))
    cmd = [sys.executable, __file__, "--measure", kind, "--root", str(root), "--rows", str(rows),
           "--batch-size", str(args.batch_size), "--shard-size", str(args.shard_size), "--workers", str(args.workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} measurement failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]) if kind != "build" else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--shard-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2, help="alternating bare/distill pairs; the best time of each counts")
    ap.add_argument("--measure", choices=["bare", "distill", "build"])
    ap.add_argument("--root")
    args = ap.parse_args()
    if args.measure == "build":
        build(Path(args.root), args.rows)
        return
    if args.measure:
        print(json.dumps(measure(args.measure, Path(args.root), args.rows, args.batch_size, args.shard_size, args.workers)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for n in (args.rows, 10 * args.rows):  # in subprocesses: this parent stays small (no torch imported here)
            _sub("build", root, n, args)
        runs = []
        for _ in range(args.repeats):  # alternate, so that machine load hits both sides alike
            runs += [_sub("bare", root, args.rows, args), _sub("distill", root, args.rows, args)]
        big = _sub("distill", root, 10 * args.rows, args)
    best = {k: min((r for r in runs if r["kind"] == k), key=lambda r: r["seconds"]) for k in ("bare", "distill")}
    small = best["distill"]
    ratio = best["distill"]["rows_per_s"] / best["bare"]["rows_per_s"]
    rss = big["peak_rss_mb"] / small["peak_rss_mb"]
    print(f"{'':28s}{'bare generate()':>18s}{'narvl-pipe distill':>20s}")
    print(f"{'rows/s (' + str(args.rows) + ' rows)':28s}{best['bare']['rows_per_s']:18.2f}{small['rows_per_s']:20.2f}")
    print(f"{'peak RSS MB (1x rows)':28s}{best['bare']['peak_rss_mb']:18.1f}{small['peak_rss_mb']:20.1f}")
    print(f"{'peak RSS MB (10x rows)':28s}{'':18s}{big['peak_rss_mb']:20.1f}")
    print(f"throughput ratio distill/bare = {ratio:.3f} (goal >= 0.9); RSS 10x/1x = {rss:.3f} (goal <= 1.2)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "settings": {k: getattr(args, k) for k in ("rows", "batch_size", "shard_size", "workers", "threads", "repeats")},
        "runs": runs, "distill_10x": big, "throughput_ratio": ratio, "peak_rss_ratio_10x_over_1x": rss,
        "goals": {"throughput_ratio": ">= 0.9", "peak_rss_ratio": "<= 1.2"},
    }, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
