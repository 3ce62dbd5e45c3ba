"""Overhead of `narvl-pipe distill` over a bare `generate()` loop in steady state, at equal CPU, and its memory with
the row count. Timed by the harness (`benchmarks/timing.py`): each side is a pinned worker process, and every process
a side starts (distill's DataLoader workers) runs on that side's cores, so distill's image decoding in its workers
gets exactly the CPU on which the bare loop decodes inline (on a 2-core machine: both sides on the same core, one at
a time, rounds interleaved).

Both sides run the same tiny teacher over the same batches (caption task, OFA's beam 5 / 16 tokens / no-repeat 3,
the same batch size; batches never cross shards, and the row count is a multiple of the shard size), and must write
the same captions (checked every round). Two teachers (`--teachers`), each a pair of the same session: `ofa` (a
2+2-layer d_model 64 OFA) and `git` (a transformers GIT, 1 text layer, hidden 32, CLIP 32 px: the test suite's
`tiny_hf.build_git`, whose per-row model time is small, so distill's per-row work shows the most):
- bare: open the dataset, load the model, then for each batch decode + preprocess the images, build the prompt
  (OFA: its processor and tokenizer; GIT: the teacher's own `prepare`, the processor call distill makes),
  `generate()` under `torch.inference_mode()` with the task's settings, decode the texts; kept in a Python list;
- distill: `run_distill(DistillConfig(...))`: the same plus its DataLoader (workers only where the side has cores for
  them unless `--workers` says otherwise: none on one core), transition scores, shards, flushes, manifest, assembly.

The timed span is the steady state: from the start of batch `--warmup-batches` to the start of the last batch (each
side records the start of every generate() call), so imports, model load, worker start-up and final assembly are
excluded; both sides cover the same rows in it, so distill/bare throughput = the harness's bare-over-distill ratio
inverted, i.e. the paired figure "distill vs bare" (goal >= 0.95). Each call also records start-up, end-to-end
seconds and memory: peak PSS and RSS of the process plus its DataLoader workers (sampled from /proc every 20 ms
outside the steady state and once per batch in it, that sampling left out of the timed span: see `MemorySampler`;
PSS shares forked pages fairly, RSS counts them in each process), and the anonymous + shared-memory part of that PSS
(heap, tensors: what grows if rows were kept); distill also runs at a tenth of the rows, for the memory growth
(goal: peak anonymous PSS at the full row count <= 1.2x that at a tenth).

    python benchmarks/distill_overhead.py [--rows 1280] [--shard-size 128] [--batch-size 16] [--workers N] \
        [--teachers ofa git]

Writes benchmarks/results/distill_overhead.json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import timing  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "distill_overhead.json"
GEN = dict(num_beams=5, max_new_tokens=16, no_repeat_ngram_size=3)
TEACHERS = {"ofa": "teacher", "git": "git"}
"""Teacher name -> its folder under the build root."""


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
    if not (root / "git").exists():
        sys.path.insert(0, str(REPO / "tests" / "distill" / "teachers"))  # the suite's tiny real transformers teachers
        import tiny_hf

        tiny_hf.build_git(root / "git")
    rng = np.random.default_rng(0)

    def png(i):
        buf = io.BytesIO()
        PILImage.fromarray(rng.integers(0, 255, (size + i % 7, size, 3), dtype=np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    feats = Features({"id": Value("string"), "image": Image(), "captions": List(Value("string"))})
    Dataset.from_list([{"id": f"r{i:06d}", "image": {"bytes": png(i), "path": None}, "captions": [words[i % 4]]}
                       for i in range(rows)], features=feats).save_to_disk(str(root / f"src{rows}"))


class MemorySampler(threading.Thread):
    """Peak over time of the summed PSS and RSS (MB) of this process and all its descendants.

    Sampling walks every process's page tables (`smaps_rollup`): measured on one core, a sample of one torch-sized
    process took 30 ms of CPU (83 ms for distill's main process + 2 workers) when each file was read three times,
    10 ms (29 ms) read once; a thread doing it every 20 ms beside the timed loop halved its speed, distill's more
    than the bare loop's. So during the steady state the thread is `paused` and the side samples once per batch,
    between two generate() calls, on a clock that leaves the sampling out (`hold`)."""

    def __init__(self, period: float = 0.02):
        super().__init__(daemon=True)
        self.period, self.peak_pss, self.peak_anon, self.peak_rss, self.max_processes = period, 0.0, 0.0, 0.0, 0
        self.held = 0.0
        """Seconds spent sampling while paused (to leave out of the timed span)."""
        self._halt, self._paused, self._lock = threading.Event(), threading.Event(), threading.Lock()

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
    def _kb(path: str, *fields: str) -> list[int]:
        """The values (kB) of `fields` in one read of a /proc file (0 for a process gone)."""
        values = dict.fromkeys(fields, 0)
        try:
            for line in Path(path).read_text().splitlines():
                name = line.split(":", 1)[0] + ":"
                if name in values:
                    values[name] = int(line.split()[1])
        except OSError:
            pass
        return list(values.values())

    def sample(self) -> None:
        with self._lock:
            pids = self._tree(os.getpid())
            pss = anon = rss = 0.0
            for p in pids:
                total, anonymous, shmem = self._kb(f"/proc/{p}/smaps_rollup", "Pss:", "Pss_Anon:", "Pss_Shmem:")
                pss, anon = pss + total / 1024, anon + (anonymous + shmem) / 1024
                rss += self._kb(f"/proc/{p}/status", "VmRSS:")[0] / 1024
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
            self.peak_anon = max(self.peak_anon, anon)
            self.max_processes = max(self.max_processes, len(pids))

    def pause(self) -> None:
        with self._lock:  # after a sample in progress
            self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    def hold(self) -> None:
        """One sample while paused, its time added to `held`."""
        t0 = time.perf_counter()
        self.sample()
        self.held += time.perf_counter() - t0

    def run(self) -> None:
        while not self._halt.wait(self.period):
            if not self._paused.is_set():
                self.sample()

    def stop(self) -> dict:
        self._halt.set()
        self.join()
        self.sample()
        return {"peak_pss_mb": round(self.peak_pss, 1), "peak_anon_pss_mb": round(self.peak_anon, 1),
                "peak_rss_mb": round(self.peak_rss, 1),
                "processes": self.max_processes}


def side(kind: str, root: str, batch_size: int, shard_size: int, workers: int, warmup_batches: int):
    """A harness side, `bare` or `distill`; case `TEACHER-rowsN` (`ofa` or `git`): a run over the N-row source, timed
    over its steady state."""
    import shutil

    import pyarrow.parquet as pq
    import torch
    from datasets import Image, load_from_disk
    from transformers import GitForCausalLM
    from transformers.generation import GenerationMixin

    from distill.images import load_image
    from distill.loader import open_model
    from distill.ofa import OFAModel, fairseq_rules
    from distill.ofa.image_processing_ofa import OFAImageProcessor
    from distill.ofa.tokenization_ofa import load_ofa_tokenizer
    from distill.run import DistillConfig, run_distill
    from distill.tasks import get_task

    starts: list[tuple[float, int]] = []  # (time, rows) at the start of every generate() call
    run_state: dict = {}  # the call's sampler and batch count

    def timed(original):
        def generate(self, *args, **kwargs):
            sampler, k = run_state["sampler"], len(starts)
            if k == warmup_batches:  # the steady state starts: the sampler thread stops walking the page tables
                sampler.pause()
            starts.append((time.perf_counter() - sampler.held, len(kwargs["input_ids"])))
            if k == run_state["batches"] - 1:  # the span ends at the last batch's start
                sampler.resume()
            out = original(self, *args, **kwargs)
            if k < run_state["batches"] - 1 and sampler.paused:
                sampler.hold()  # between batches (the workers have prefetched), left out of the span
            return out
        return generate

    OFAModel.generate = timed(OFAModel.generate)
    GitForCausalLM.generate = timed(GenerationMixin.generate)
    task = get_task("caption")

    def bare_ofa(src: Path, teacher: Path) -> list[tuple[str, str]]:
        ds = load_from_disk(str(src)).cast_column("image", Image(decode=False))
        model = OFAModel.from_pretrained(str(teacher)).eval()
        tok, proc = load_ofa_tokenizer(teacher), OFAImageProcessor.from_pretrained(str(teacher))
        settings = open_model(teacher, {"id": str(teacher)}, task=task).settings(task, None, GEN)  # distill's
        out = []
        with torch.inference_mode():
            for lo in range(0, len(ds), batch_size):
                batch = ds[lo: lo + batch_size]
                pix = torch.stack([torch.from_numpy(proc.process_image(load_image(im))) for im in batch["image"]])
                ids = tok([task.prompt({})] * len(pix), return_tensors="pt", padding=True)["input_ids"]
                masks = torch.ones(len(pix), dtype=torch.bool)
                res = model.generate(input_ids=ids, patch_images=pix, patch_masks=masks, output_scores=True,
                                     return_dict_in_generate=True, **fairseq_rules.generate_kwargs(settings, tok))
                out += zip(batch["id"], (t.strip() for t in tok.batch_decode(res.sequences, skip_special_tokens=True)))
        return out

    def bare_hf(src: Path, teacher: Path) -> list[tuple[str, str]]:
        ds = load_from_disk(str(src)).cast_column("image", Image(decode=False))
        hf = open_model(teacher, {"id": str(teacher)}, task=task)
        hf.load()
        settings = hf.settings(task, None, GEN)
        gen = {k: settings[k] for k in GEN}
        out = []
        with torch.inference_mode():
            for lo in range(0, len(ds), batch_size):
                batch = ds[lo: lo + batch_size]
                rows = [{"id": i} for i in batch["id"]]
                inputs = hf.prepare(rows, [load_image(im) for im in batch["image"]], task)
                enc = {k: v for k, v in inputs["model_inputs"].items() if k in hf.accepted}
                seq = hf.model.generate(**enc, **gen, do_sample=False)
                texts = hf.tokenizer.batch_decode(seq[:, inputs["prompt_len"]:], skip_special_tokens=True)
                out += zip(batch["id"], (t.strip() for t in texts))
        return out

    def distill(src: Path, teacher: Path) -> list[tuple[str, str]]:
        out = Path(tempfile.mkdtemp(dir=root))
        run_distill(DistillConfig(task="caption", teacher=str(teacher), data=str(src), out=str(out),
                                  batch_size=batch_size, shard_size=shard_size, num_workers=workers, progress=False,
                                  **GEN))
        rows = []
        for shard in sorted((out / "data").glob("*.parquet")):
            table = pq.read_table(shard, columns=["id", "target"]).to_pydict()
            rows += zip(table["id"], table["target"])
        shutil.rmtree(out)
        return rows

    def prepare(case: str):
        name, n = case.split("-rows")
        src, teacher = Path(root) / f"src{n}", Path(root) / TEACHERS[name]
        fn = distill if kind == "distill" else bare_ofa if name == "ofa" else bare_hf

        def run():
            sampler = MemorySampler()
            run_state.update(sampler=sampler, batches=int(n) // batch_size)
            sampler.start()
            starts.clear()
            t0 = time.perf_counter()
            rows = fn(src, teacher)
            seconds = time.perf_counter() - t0
            if len(starts) <= warmup_batches + 1:
                raise SystemExit(f"{case} makes {len(starts)} batches: too few for --warmup-batches {warmup_batches}")
            steady_rows = sum(n for _, n in starts[warmup_batches:-1])
            steady_s = starts[-1][0] - starts[warmup_batches][0]
            info = {"rows": len(rows), "startup_s": round(starts[0][0] - t0, 3), "seconds": round(seconds, 3),
                    "steady_rows": steady_rows, "steady_rows_per_s": steady_rows / steady_s,
                    "vmhwm_mb": _vmhwm_mb(), **sampler.stop()}
            return timing.Timed(steady_s, sorted(rows), info)
        return run

    return prepare


def _vmhwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1280)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--shard-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=None,
                    help="distill's DataLoader workers (on the side's cores; default: distill's own choice)")
    ap.add_argument("--warmup-batches", type=int, default=4, help="batches left out of the steady state")
    ap.add_argument("--teachers", nargs="+", choices=sorted(TEACHERS), default=["ofa", "git"],
                    help="the pairs measured (the first also gives the memory growth)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--build", help=argparse.SUPPRESS)
    timing.add_args(ap)
    args = ap.parse_args()
    if args.build:
        build(Path(args.build), args.rows)
        return
    settings = timing.Settings.from_args(args)
    if args.rows % args.shard_size or args.shard_size % args.batch_size:
        raise SystemExit("--rows must be a multiple of --shard-size, itself a multiple of --batch-size")

    small_rows = max(args.shard_size, args.rows // 10 // args.shard_size * args.shard_size)
    with tempfile.TemporaryDirectory() as tmp:
        for n in sorted({small_rows, args.rows}):  # in subprocesses: this parent stays small (no torch here)
            subprocess.run([sys.executable, __file__, "--build", tmp, "--rows", str(n)], check=True,
                           env=dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get(
                               "PYTHONPATH")]))))
        kwargs = dict(root=tmp, batch_size=args.batch_size, shard_size=args.shard_size, workers=args.workers,
                      warmup_batches=args.warmup_batches)
        sides = [timing.Side(k, __file__, "side", dict(kwargs, kind=k), python_path=[str(REPO)],
                             env={"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}) for k in ("bare", "distill")]
        entries = {t: (timing.Entry("bare", f"{t}-rows{args.rows}"), timing.Entry("distill", f"{t}-rows{args.rows}"))
                   for t in args.teachers}
        small = timing.Entry("distill", f"{args.teachers[0]}-rows{small_rows}")  # the memory growth
        with timing.Session(sides, settings) as session:
            pairs = session.run([e for pair in entries.values() for e in pair] + [small],
                                [timing.Pair(f"distill vs bare, {t} (steady-state throughput)", d, b, True)
                                 for t, (b, d) in entries.items()])
            result = session.result()
    info = result["info"]
    med = {t: {k: {f: statistics.median(r[f] for r in info[e.key]) for f in info[e.key][0] if f != "rows"}
               for k, e in zip(("bare", "distill"), pair)} for t, pair in entries.items()}
    first = med[args.teachers[0]]
    growth = first["distill"]["peak_anon_pss_mb"] / statistics.median(r["peak_anon_pss_mb"] for r in info[small.key])
    for t, pair in zip(args.teachers, pairs):
        print(f"{t + ': median of ' + str(settings.rounds) + ' rounds':36s}{'bare generate()':>18s}"
              f"{'narvl-pipe distill':>20s}")
        for label, field, fmt in [(f"steady rows/s ({args.rows} rows)", "steady_rows_per_s", ".2f"),
                                  ("start-up to 1st batch s", "startup_s", ".2f"), ("wall s", "seconds", ".1f"),
                                  ("peak PSS MB (+ workers)", "peak_pss_mb", ".1f"),
                                  ("peak anonymous PSS MB (+ workers)", "peak_anon_pss_mb", ".1f"),
                                  ("peak RSS MB (+ workers)", "peak_rss_mb", ".1f"),
                                  ("VmHWM MB (main)", "vmhwm_mb", ".1f")]:
            print(f"{label:36s}{med[t]['bare'][field]:18{fmt}}{med[t]['distill'][field]:20{fmt}}")
        print(timing.pair_line(pair) + " (goal >= 0.95)")
    print(f"peak anonymous PSS {args.rows}/{small_rows} rows ({args.teachers[0]}) = {growth:.3f} (goal <= 1.2)")
    timing.write(args.out, {
        "benchmark": "distill_overhead", "generation": GEN,
        "settings": {k: getattr(args, k) for k in ("rows", "batch_size", "shard_size", "workers", "warmup_batches",
                                                    "teachers")},
        "medians": med, "peak_anon_pss_ratio_full_over_tenth": growth,
        "goals": {"distill vs bare": ">= 0.95", "peak_anon_pss_ratio": "<= 1.2"}, **result})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
