"""Serving the student: PyTorch eager vs onnxruntime latency, and HTTP throughput with dynamic batching, timed by the
harness (`benchmarks/timing.py`: pinned worker processes, interleaved rounds, "x faster" = the median of paired
per-round ratios with its min-max, outputs checked every round).

One run builds a small OFA (random weights, the official 59,457-token vocabulary) and its NARVL student, exports the
student with `student.export.export_onnx`, and measures on the CPU:

* latency: the student's forward + greedy CTC decode (`model.decode`) at batch 1 and 8, one side PyTorch eager and
  one side onnxruntime (same ids required);
* throughput: seconds per request of `narvl-pipe serve` (started by the side on its own cores, answering a bounded
  number of requests from 1, 8 and 32 concurrent clients that the side also runs): the ONNX student with batching,
  without batching, and for context the AR teacher served the naive way (`--max-batch-size 1`).

    python benchmarks/serve.py [--requests 32] [--teacher-requests 8]
"""
from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import timing  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "serve.json"
CLIENTS = (1, 8, 32)
SERVERS = {  # side: (model folder, max batch size, requests option)
    "student onnx, batching": ("onnx", None, "requests"),
    "student onnx, no batching": ("onnx", 1, "requests"),
    "AR teacher, generate() per request": ("teacher", 1, "teacher_requests"),
}
FIXTURE_TOKENIZER = REPO / "tests" / "fixtures" / "ofa-tokenizer"


def build(root: Path, args) -> None:
    """Teacher, student and ONNX export folders of the benchmarked size under `root`."""
    import torch

    from distill.ofa import OFAConfig, OFAModel, OFAProcessor
    from distill.ofa.image_processing_ofa import OFAImageProcessor
    from distill.ofa.tokenization_ofa import load_ofa_tokenizer
    from distill.tasks import get_task
    from student.model_folder import save_model_folder
    from student.export import export_onnx
    from student.modeling_narvl import NARVLModel

    cfg = OFAConfig(d_model=args.d_model, encoder_layers=args.layers, decoder_layers=args.layers,
                    encoder_attention_heads=args.heads, decoder_attention_heads=args.heads,
                    encoder_ffn_dim=4 * args.d_model, decoder_ffn_dim=4 * args.d_model, resnet_type=args.resnet)
    torch.manual_seed(0)
    ofa = OFAModel(cfg).eval()
    proc = OFAProcessor(OFAImageProcessor(size=args.resolution), load_ofa_tokenizer(FIXTURE_TOKENIZER))
    save_model_folder(ofa, proc, root / "teacher")
    student = NARVLModel.from_ofa(ofa, num_queries=get_task(args.task).num_queries, task=args.task).eval()
    save_model_folder(student, proc, root / "student")
    print(export_onnx(root / "student", root / "onnx").line(), flush=True)


def images(n: int, size: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


# ------------------------------------------------------------------------------------------------------ sides
def latency_side(backend: str, root: str, task: str, resolution: int, threads: int):
    """A harness side: the student in PyTorch eager or onnxruntime; case `bN`: decode N images."""
    from distill.seam import ModelOptions, prepare_rows
    from distill.tasks import get_task
    from student.runner import NARVLStudent

    folder = Path(root) / ("student" if backend == "eager" else "onnx")
    model = NARVLStudent.from_pretrained(folder, {"id": str(folder)}, ModelOptions(), "cpu", num_threads=threads)
    model.load()
    t = get_task(task)
    settings = model.settings(t)
    rows = [{"id": str(i), "image": im} for i, im in enumerate(images(8, resolution))]

    def prepare(case: str):
        inputs = prepare_rows(model, rows[: int(case[1:])], t).inputs
        return lambda: [best[0].ids for best in model.infer(inputs, t, settings)]
    return prepare


def server_side(model: str, max_batch_size: int, requests: int, resolution: int, task: str):
    """A harness side: `narvl-pipe serve` started here (so on this side's cores) and driven by `clients` concurrent
    clients of this process; case `cN`: N clients; each call answers `requests` requests (after one warm-up
    request) and reports seconds per request."""
    port = _free_port()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log")  # uvicorn logs every request: a file, never a pipe
    server = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", "--model", model, "--task", task,
                               "--port", str(port), "--max-batch-size", str(max_batch_size)],
                              stdout=log, stderr=subprocess.STDOUT)
    atexit.register(server.terminate)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url, server, log)
    payloads = []
    for im in images(requests, resolution):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        payloads.append({"image": base64.b64encode(buf.getvalue()).decode()})

    def prepare(case: str):
        def run():
            seconds, answers = asyncio.run(_drive(url, payloads, int(case[1:])))
            return timing.Timed(seconds / len(payloads), [a["output"] for a in answers],
                                {"mean_batch": sum(a["batch_size"] for a in answers) / len(answers)})
        return run
    return prepare


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, server: subprocess.Popen, log, timeout: float = 300.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"narvl-pipe serve exited with {server.returncode}:\n{log.read()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"narvl-pipe serve did not answer /health within {timeout:.0f} s")


async def _drive(url: str, payloads: list[dict], clients: int) -> tuple[float, list[dict]]:
    """`clients` concurrent clients working through `payloads` (each one request at a time): (seconds, the answers
    in payload order)."""
    import httpx

    todo = list(range(len(payloads)))
    answers: dict[int, dict] = {}

    async def client(c: httpx.AsyncClient):
        while todo:
            k = todo.pop()
            res = await c.post("/predict", json=payloads[k])
            res.raise_for_status()
            answers[k] = res.json()

    # TCP_NODELAY as curl and browsers set it: a request's headers and body then leave without waiting for an ACK.
    transport = httpx.AsyncHTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
                                         limits=httpx.Limits(max_connections=clients))
    async with httpx.AsyncClient(base_url=url, timeout=600, transport=transport) as c:
        await c.post("/predict", json=payloads[0])  # warm-up (and the connection)
        t0 = time.perf_counter()
        await asyncio.gather(*[client(c) for _ in range(clients)])
        return time.perf_counter() - t0, [answers[k] for k in range(len(payloads))]


# ------------------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="caption")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--resnet", default="resnet18")
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--requests", type=int, default=32, help="requests per timed call (student servers)")
    ap.add_argument("--teacher-requests", type=int, default=8, help="requests per timed call (AR teacher)")
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--clients", nargs="+", type=int, default=list(CLIENTS), help="concurrent clients of each run")
    ap.add_argument("--out", type=Path, default=RESULTS)
    timing.add_args(ap)
    args = ap.parse_args()
    settings = timing.Settings.from_args(args)
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp), args)
        common = dict(task=args.task, resolution=args.resolution)
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        sides = [timing.Side(b, __file__, "latency_side", dict(common, backend=b, root=tmp, threads=args.threads),
                             python_path=[str(REPO)]) for b in ("eager", "onnxruntime")]
        sides += [timing.Side(name, __file__, "server_side", dict(common, model=str(Path(tmp) / folder),
                                                                   max_batch_size=batch or args.max_batch_size,
                                                                   requests=getattr(args, requests)),
                              python_path=[str(REPO)], env=env)
                  for name, (folder, batch, requests) in SERVERS.items()]
        latency = [timing.Pair(f"onnxruntime vs eager b{b}", timing.Entry("onnxruntime", f"b{b}"),
                               timing.Entry("eager", f"b{b}"), same_outputs=True) for b in (1, 8)]
        student, unbatched, teacher = SERVERS
        throughput = []
        for c in args.clients:
            e = {name: timing.Entry(name, f"c{c}") for name in SERVERS}
            throughput += [timing.Pair(f"{student} vs {teacher}, {c} clients (per request)", e[student], e[teacher],
                                       same_outputs=False),
                           timing.Pair(f"{student} vs {unbatched}, {c} clients (per request)", e[student],
                                       e[unbatched], same_outputs=True)]
        with timing.Session(sides, settings) as session:
            session.run([e for p in latency for e in (p.a, p.b)], latency)
            session.run([timing.Entry(n, f"c{c}") for c in args.clients for n in SERVERS], throughput)
            result = session.result()
    timing.print_pairs(result, "throughput pairs: seconds per request")
    timing.write(args.out, {
        "benchmark": "serve", "model": {"d_model": args.d_model, "layers": args.layers, "heads": args.heads,
                                        "resnet": args.resnet, "resolution": args.resolution, "task": args.task},
        "requests": {"student": args.requests, "teacher": args.teacher_requests}, "max_batch_size": args.max_batch_size,
        "note": "random weights; throughput times are seconds per request (server and clients on the side's cores)",
        **result})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
