"""Overhead of `narvl-pipe distill` over a bare `generate()` loop in steady state, and its memory with the row count.

Both sides run the same tiny teacher over the same batches (caption task, OFA's beam 5 / 16 tokens / no-repeat 3,
the same batch size; batches never cross shards, and the row count is a multiple of the shard size):
- bare: open the dataset, load the model, then for each batch decode + preprocess the images, tokenise the prompt,
  `generate()` under `torch.inference_mode()`; results kept in a Python list, nothing written;
- distill: `run_distill(DistillConfig(...))`: the same plus DataLoader workers, shards, flushes, manifest, assembly.

Each measurement runs in its own subprocess (same thread settings). Reported separately:
- steady state: rows/s between the start of batch `--warmup` and the start of the last batch (each side records
  the start of every generate() call), so imports, model load, worker start-up and final assembly are excluded;
- start-up: imports (of what each side needs), then from the run's start to the first generate() (model load,
  source opening, workers), and the end-to-end wall time with rows/s over it;
- memory: peak PSS and RSS of the process plus its DataLoader workers (sampled every 20 ms from /proc; PSS shares
  forked pages fairly, RSS counts them in each process), the anonymous + shared-memory part of that PSS (heap,
  tensors: what grows if rows were kept; the rest is file pages such as the memory-mapped source), and the
  process's own VmHWM.

    python benchmarks/distill_overhead.py [--rows 1280] [--shard-size 128] [--batch-size 16] [--repeats 2]

Goals: distill steady-state throughput >= 0.95x the bare loop (issue 12); peak anonymous PSS at the full row
count <= 1.2x that at a tenth of it (issue 3). Writes benchmarks/results/distill_overhead.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

T_START = time.perf_counter()
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "distill_overhead.json"
PROMPT = " what does the image describe?"
GEN = dict(num_beams=5, max_new_tokens=16, no_repeat_ngram_size=3)


def build(root: Path, rows: int, size: int = 64) -> None:
    """Teacher (d_model 64, 2+2 layers, resnet18 stem, 64 px) and `rows` random images with captions."""
    import io

    import numpy as np
    import torch
    from datasets import Dataset, Features, Image, List, Value
    from PIL import Image as PILImage

    from distill.ofa.image_processing_ofa import OFAImageProcessor
    from distill.ofa import OFAConfig, OFAModel
    from distill.ofa.tokenization_ofa import train_tiny_tokenizer

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


class MemorySampler(threading.Thread):
    """Peak over time of the summed PSS and RSS (MB) of this process and all its descendants."""

    def __init__(self, period: float = 0.02):
        super().__init__(daemon=True)
        self.period, self.peak_pss, self.peak_anon, self.peak_rss, self.max_processes = period, 0.0, 0.0, 0.0, 0
        self._halt = threading.Event()

    @staticmethod
    def _tree(pid: int) -> list[int]:
        out, todo = [], [pid]
        while todo:
            p = todo.pop()
            out.append(p)
            try:
                for task in os.listdir(f"/proc/{p}/task"):
                    todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
            except OSError:
                pass
        return out

    @staticmethod
    def _kb(path: str, field: str) -> int:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(field):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def sample(self) -> None:
        pids = self._tree(os.getpid())
        pss = sum(self._kb(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids) / 1024
        anon = sum(self._kb(f"/proc/{p}/smaps_rollup", "Pss_Anon:") + self._kb(f"/proc/{p}/smaps_rollup", "Pss_Shmem:")
                   for p in pids) / 1024
        rss = sum(self._kb(f"/proc/{p}/status", "VmRSS:") for p in pids) / 1024
        self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
        self.peak_anon = max(self.peak_anon, anon)
        self.max_processes = max(self.max_processes, len(pids))

    def run(self) -> None:
        while not self._halt.wait(self.period):
            self.sample()

    def stop(self) -> dict:
        self._halt.set()
        self.join()
        self.sample()
        return {"peak_pss_mb": round(self.peak_pss, 1), "peak_anon_pss_mb": round(self.peak_anon, 1),
                "peak_rss_mb": round(self.peak_rss, 1),
                "processes": self.max_processes}


def measure(kind: str, root: Path, rows: int, batch_size: int, shard_size: int, workers: int, warmup: int) -> dict:
    """One measurement, inside its own process."""
    sampler = MemorySampler()
    sampler.start()
    import torch

    from distill.ofa import OFAModel

    if kind == "distill":
        from distill.run import DistillConfig, run_distill
    else:
        from datasets import Image, load_from_disk

        from distill.images import load_image
        from distill.ofa.image_processing_ofa import OFAImageProcessor
        from distill.ofa.tokenization_ofa import load_ofa_tokenizer
    imports_s = time.perf_counter() - T_START

    starts: list[tuple[float, int]] = []  # (time, rows) at the start of every generate() call
    original = OFAModel.generate

    def timed_generate(self, *args, **kwargs):
        starts.append((time.perf_counter(), len(kwargs["input_ids"])))
        return original(self, *args, **kwargs)

    OFAModel.generate = timed_generate
    src, teacher = root / f"src{rows}", root / "teacher"
    t0 = time.perf_counter()
    if kind == "distill":
        out = Path(tempfile.mkdtemp(dir=root))
        summary = run_distill(DistillConfig(task="caption", teacher=str(teacher), data=str(src), out=str(out),
                                            batch_size=batch_size, shard_size=shard_size, num_workers=workers,
                                            progress=False, **GEN))
        assert summary.rows == rows, summary
    else:
        ds = load_from_disk(str(src)).cast_column("image", Image(decode=False))
        model = OFAModel.from_pretrained(str(teacher)).eval()
        tok, proc = load_ofa_tokenizer(teacher), OFAImageProcessor.from_pretrained(str(teacher))
        results = []
        with torch.inference_mode():
            for lo in range(0, rows, batch_size):
                batch = ds[lo: lo + batch_size]
                pix = torch.stack([torch.from_numpy(proc.process_image(load_image(im))) for im in batch["image"]])
                ids = tok([PROMPT] * len(pix), return_tensors="pt")["input_ids"]
                res = model.generate(input_ids=ids, patch_images=pix, output_scores=True,
                                     return_dict_in_generate=True, **GEN)
                results += tok.batch_decode(res.sequences, skip_special_tokens=True)
        assert len(results) == rows
    seconds = time.perf_counter() - t0
    if len(starts) <= warmup + 1:
        raise SystemExit(f"{rows} rows make {len(starts)} batches: too few for --warmup {warmup}")
    steady_rows = sum(n for _, n in starts[warmup:-1])
    steady_s = starts[-1][0] - starts[warmup][0]
    return {"kind": kind, "rows": rows, "imports_s": round(imports_s, 3),
            "startup_s": round(starts[0][0] - t0, 3), "seconds": round(seconds, 3), "rows_per_s": rows / seconds,
            "steady_rows": steady_rows, "steady_s": round(steady_s, 3), "steady_rows_per_s": steady_rows / steady_s,
            "vmhwm_mb": _vmhwm_mb(), **sampler.stop()}


def _vmhwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _sub(kind, root, rows, args) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(REPO))
    cmd = [sys.executable, __file__, "--measure", kind, "--root", str(root), "--rows", str(rows),
           "--batch-size", str(args.batch_size), "--shard-size", str(args.shard_size), "--workers", str(args.workers),
           "--warmup", str(args.warmup)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} measurement failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]) if kind != "build" else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1280)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--shard-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=4, help="batches left out of the steady-state rate")
    ap.add_argument("--repeats", type=int, default=2, help="alternating bare/distill pairs; medians are reported")
    ap.add_argument("--measure", choices=["bare", "distill", "build"])
    ap.add_argument("--root")
    args = ap.parse_args()
    if args.measure == "build":
        build(Path(args.root), args.rows)
        return
    if args.measure:
        print(json.dumps(measure(args.measure, Path(args.root), args.rows, args.batch_size, args.shard_size,
                                 args.workers, args.warmup)))
        return
    if args.rows % args.shard_size or args.shard_size % args.batch_size:
        raise SystemExit("--rows must be a multiple of --shard-size, itself a multiple of --batch-size")

    small_rows = max(args.shard_size, args.rows // 10 // args.shard_size * args.shard_size)
    load_before, started = os.getloadavg(), time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for n in sorted({small_rows, args.rows}):  # in subprocesses: this parent stays small (no torch here)
            _sub("build", root, n, args)
        runs = []
        for _ in range(args.repeats):  # alternate, so that machine load hits both sides alike
            runs += [_sub("bare", root, args.rows, args), _sub("distill", root, args.rows, args)]
        small = _sub("distill", root, small_rows, args)
    med = {k: {f: statistics.median(r[f] for r in runs if r["kind"] == k)
               for f in ("steady_rows_per_s", "rows_per_s", "imports_s", "startup_s", "seconds", "peak_pss_mb",
                         "peak_anon_pss_mb", "peak_rss_mb", "vmhwm_mb")} for k in ("bare", "distill")}
    pairs = [(b, d) for b, d in zip(runs[0::2], runs[1::2])]
    ratios = [d["steady_rows_per_s"] / b["steady_rows_per_s"] for b, d in pairs]
    ratio = statistics.median(ratios)
    big = statistics.median(r["peak_anon_pss_mb"] for r in runs if r["kind"] == "distill")
    growth = big / small["peak_anon_pss_mb"]
    print(f"{'median of ' + str(args.repeats) + ' runs':36s}{'bare generate()':>18s}{'narvl-pipe distill':>20s}")
    for label, field, fmt in [(f"steady rows/s ({args.rows} rows)", "steady_rows_per_s", ".2f"),
                              ("end-to-end rows/s", "rows_per_s", ".2f"), ("imports s", "imports_s", ".2f"),
                              ("start-up to 1st batch s", "startup_s", ".2f"), ("wall s", "seconds", ".1f"),
                              ("peak PSS MB (+ workers)", "peak_pss_mb", ".1f"),
                              ("peak anonymous PSS MB (+ workers)", "peak_anon_pss_mb", ".1f"),
                              ("peak RSS MB (+ workers)", "peak_rss_mb", ".1f"), ("VmHWM MB (main)", "vmhwm_mb", ".1f")]:
        print(f"{label:36s}{med['bare'][field]:18{fmt}}{med['distill'][field]:20{fmt}}")
    print(f"steady-state ratio distill/bare = {ratio:.3f} (per pair: {', '.join(f'{r:.3f}' for r in ratios)}; "
          f"goal >= 0.95); peak anonymous PSS {args.rows}/{small_rows} rows = {growth:.3f} (goal <= 1.2)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "settings": {k: getattr(args, k) for k in ("rows", "batch_size", "shard_size", "workers", "threads", "warmup",
                                                   "repeats")},
        "generation": GEN, "runs": runs, "distill_small": small, "medians": med,
        "steady_throughput_ratio": ratio, "steady_throughput_ratio_per_pair": ratios,
        "peak_anon_pss_ratio_full_over_tenth": growth,
        "goals": {"steady_throughput_ratio": ">= 0.95", "peak_anon_pss_ratio": "<= 1.2"},
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "wall_seconds": round(time.time() - started, 1), "cpu_count": os.cpu_count(),
        "note": "shared CPU: compare the sides of one run (alternating pairs), not runs",
    }, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
