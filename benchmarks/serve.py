"""Serving the student: PyTorch eager vs onnxruntime latency, and HTTP throughput with dynamic batching.

One run builds a small OFA (random weights, the official 59,457-token vocabulary) and its NARVL student, exports the
student with `student.export.export_onnx`, and measures, on the CPU:

* latency: the student's forward + greedy CTC decode (`model.decode`) at batch 1 and 8, PyTorch eager vs
  onnxruntime, in interleaved rounds (median reported; the ratio ort / eager is measured side by side);
* throughput: requests/s of `narvl-pipe serve`'s app (uvicorn, 127.0.0.1) answering a bounded number of requests
  from 1, 8 and 32 concurrent clients: the ONNX student with batching, and for context the AR teacher served the
  naive way (`--max-batch-size 1`: one `generate()` per request).

Both backends run on the same number of threads (`--threads`, default 1: the machine is shared). It prints a table
and writes `benchmarks/results/serve.json`.

    python benchmarks/serve.py            # ~3-5 minutes on a shared 2-core machine
    python benchmarks/serve.py --quick    # fewer rounds and requests
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from distill.ofa.image_processing_ofa import OFAImageProcessor
from distill.ofa import OFAConfig, OFAModel, OFAProcessor
from distill.tasks import get_task
from distill.ofa.tokenization_ofa import load_ofa_tokenizer
from pipelines.serve import background_server, create_app
from student.data import encode_prompts
from student.evaluate import load_model, save_model_folder
from student.export import export_onnx
from student.modeling_narvl import NARVLModel
from student.onnx_model import load_exported
from student.predictor import Predictor

RESULTS = Path(__file__).parent / "results" / "serve.json"
CLIENTS = (1, 8, 32)
STUDENT_BATCHED = "student onnx, batching"
TEACHER = "AR teacher, generate() per request"
FIXTURE_TOKENIZER = Path(__file__).parents[1] / "tests" / "fixtures" / "ofa-tokenizer"


def build(root: Path, args) -> tuple[Path, Path, Path]:
    """Teacher folder, student folder and export folder of the benchmarked size."""
    cfg = OFAConfig(d_model=args.d_model, encoder_layers=args.layers, decoder_layers=args.layers,
                    encoder_attention_heads=args.heads, decoder_attention_heads=args.heads,
                    encoder_ffn_dim=4 * args.d_model, decoder_ffn_dim=4 * args.d_model, resnet_type=args.resnet)
    torch.manual_seed(0)
    ofa = OFAModel(cfg).eval()
    proc = OFAProcessor(OFAImageProcessor(size=args.resolution), load_ofa_tokenizer(FIXTURE_TOKENIZER))
    save_model_folder(ofa, proc, root / "teacher")
    student = NARVLModel.from_ofa(ofa, num_queries=get_task(args.task).num_queries, task=args.task).eval()
    save_model_folder(student, proc, root / "student")
    return root / "teacher", root / "student", root / "onnx"


def images(n: int, size: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


def latency(student_dir: Path, onnx_dir: Path, args) -> list[dict]:
    eager = load_model(student_dir, "cpu")
    ort = load_exported(onnx_dir, "cpu", num_threads=args.threads)
    task = get_task(args.task)
    rows = [{"id": str(i), "image": im} for i, im in enumerate(images(8, args.resolution))]
    out = []
    for batch in (1, 8):
        inputs = encode_prompts(rows[:batch], task, eager.processor)
        methods = {"eager": lambda: eager.model.decode(**inputs), "onnxruntime": lambda: ort.model.decode(**inputs)}
        assert methods["eager"]() == methods["onnxruntime"](), "backends disagree"
        times: dict[str, list[float]] = {k: [] for k in methods}
        with torch.inference_mode():
            for _ in range(args.rounds):  # interleaved rounds: load drift hits both alike
                for name, fn in methods.items():
                    times[name].append(_timed(fn))
        med = {k: statistics.median(v) for k, v in times.items()}
        spread = {k: [min(v), max(v)] for k, v in times.items()}
        out.append({"batch": batch, "ms": med, "ms_min_max": spread, "ort_over_eager": med["onnxruntime"] / med["eager"]})
        print(f"latency batch {batch}: eager {med['eager']:.1f} ms, ort {med['onnxruntime']:.1f} ms "
              f"(x{out[-1]['ort_over_eager']:.2f})", flush=True)
    return out


async def _drive(url: str, payloads: list[dict], clients: int) -> tuple[float, list[int]]:
    """`clients` concurrent clients working through `payloads` (each one request at a time); (seconds, batch sizes)."""
    import httpx

    todo = list(range(len(payloads)))
    sizes: list[int] = []

    async def client(c: httpx.AsyncClient):
        while todo:
            res = await c.post("/predict", json=payloads[todo.pop()])
            res.raise_for_status()
            sizes.append(res.json()["batch_size"])

    # TCP_NODELAY as curl and browsers set it: a request's headers and body then leave without waiting for an ACK.
    transport = httpx.AsyncHTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
                                         limits=httpx.Limits(max_connections=clients))
    async with httpx.AsyncClient(base_url=url, timeout=600, transport=transport) as c:
        await c.post("/predict", json=payloads[0])  # warm-up (and the connection)
        t0 = time.perf_counter()
        await asyncio.gather(*[client(c) for _ in range(clients)])
        return time.perf_counter() - t0, sizes


def throughput(servers: dict[str, tuple[Predictor, int, list[dict]]], args) -> list[dict]:
    """Requests/s of each server at 1, 8 and 32 clients; the servers run side by side and are driven in interleaved
    rounds (median over rounds reported), so that load drift on the machine hits them alike."""
    runs: dict[tuple[str, int], list[tuple[float, list[int]]]] = {}
    with contextlib.ExitStack() as stack:
        urls = {name: stack.enter_context(background_server(create_app(
            predictor, max_batch_size=max_batch, batch_timeout_ms=args.batch_timeout_ms)))
            for name, (predictor, max_batch, _) in servers.items()}
        for r in range(args.server_rounds):
            for clients in CLIENTS:
                for name, (_, _, payloads) in servers.items():
                    seconds, sizes = asyncio.run(_drive(urls[name], payloads, clients))
                    runs.setdefault((name, clients), []).append((len(payloads) / seconds, sizes))
                    print(f"round {r}: {name}, {clients} clients: {len(payloads) / seconds:.2f} req/s "
                          f"(mean batch {statistics.mean(sizes):.1f})", flush=True)
    out = []
    for (name, clients), results in runs.items():
        rates = [rate for rate, _ in results]
        out.append({"server": name, "clients": clients, "requests": len(servers[name][2]),
                    "rounds": len(results), "requests_per_s": statistics.median(rates),
                    "requests_per_s_min_max": [min(rates), max(rates)],
                    "mean_batch": statistics.mean(size for _, sizes in results for size in sizes),
                    "max_batch_size": servers[name][1]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="caption")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--resnet", default="resnet18")
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--requests", type=int, default=32, help="requests per run (student)")
    ap.add_argument("--teacher-requests", type=int, default=8, help="requests per run (AR teacher)")
    ap.add_argument("--server-rounds", type=int, default=3, help="interleaved rounds of the throughput runs")
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--batch-timeout-ms", type=float, default=0.0)
    ap.add_argument("--quick", action="store_true", help="5 latency rounds, 1 server round, 16 / 4 requests")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.requests, args.teacher_requests, args.server_rounds = 5, 16, 4, 1
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        teacher_dir, student_dir, onnx_dir = build(Path(tmp), args)
        t0 = time.perf_counter()
        export = export_onnx(student_dir, onnx_dir)
        export_s = time.perf_counter() - t0
        print(export.line(), f"({export_s:.0f} s)", flush=True)
        lat = latency(student_dir, onnx_dir, args)

        def payload(im):
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            return {"image": base64.b64encode(buf.getvalue()).decode()}

        payloads = [payload(im) for im in images(args.requests, args.resolution)]
        student = Predictor(load_exported(onnx_dir, "cpu", num_threads=args.threads), args.task)
        teacher = Predictor(load_model(teacher_dir, "cpu"), args.task)
        thr = throughput({
            STUDENT_BATCHED: (student, args.max_batch_size, payloads),
            "student onnx, no batching": (student, 1, payloads),
            TEACHER: (teacher, 1, payloads[: args.teacher_requests]),
        }, args)

    print()
    print(f"{'':<38} {'B=1 ms':>8} {'B=8 ms':>8}")
    for name in ("eager", "onnxruntime"):
        print(f"{'student ' + name:<38} {lat[0]['ms'][name]:>8.1f} {lat[1]['ms'][name]:>8.1f}")
    print(f"{'ratio ort / eager':<38} {lat[0]['ort_over_eager']:>8.2f} {lat[1]['ort_over_eager']:>8.2f}  (goal <= 0.67 at B=1)")
    print()
    print(f"{'server (req/s, median of rounds)':<38} {'1 client':>8} {'8':>7} {'32':>7}   mean batch at 32")
    for name in dict.fromkeys(r["server"] for r in thr):
        rs = [r for r in thr if r["server"] == name]
        print(f"{name:<38} " + " ".join(f"{r['requests_per_s']:>7.2f}" for r in rs) + f"   {rs[-1]['mean_batch']:.1f}")
    rate = {(r["server"], r["clients"]): r["requests_per_s"] for r in thr}
    print(f"{'student batching / AR teacher':<38} "
          + " ".join(f"{rate[STUDENT_BATCHED, c] / rate[TEACHER, c]:>6.1f}x" for c in CLIENTS))
    meta = {"torch": torch.__version__, "python": sys.version.split()[0], "threads": args.threads,
            "machine": platform.machine(), "device": "cpu",
            "model": {"d_model": args.d_model, "layers": args.layers, "heads": args.heads, "resnet": args.resnet,
                      "resolution": args.resolution, "vocab": 59457, "task": args.task,
                      "num_queries": get_task(args.task).num_queries},
            "rounds": args.rounds, "server_rounds": args.server_rounds, "export_seconds": export_s,
            "export_max_abs_diff": export.spec.max_abs_diff, "batch_timeout_ms": args.batch_timeout_ms,
            "note": "random weights; shared, loaded 2-core machine: absolute times are noisy, the side-by-side "
                    "ratios less so; ms_min_max gives the spread over rounds"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"run": meta, "latency": lat, "throughput": thr}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
