"""The one timing harness of benchmarks/: paired, interleaved rounds between persistent, pinned worker processes.

A benchmark declares *sides* and *entries*:
- a side is one persistent worker process (plus any processes it starts, e.g. DataLoader workers or a server: they
  inherit its pinning) built by a factory function of the benchmark's own file. The worker pins itself to its core
  set (`os.sched_setaffinity`) first, gets the same thread count as every other side (`OMP_NUM_THREADS` & co. in its
  environment before torch is imported, then `torch.set_num_threads`), then imports the benchmark file and calls
  `factory(**kwargs)`, which returns `prepare(case) -> thunk`; the thunk is what is timed. It returns the outputs
  (tensors, lists, dicts), or `Timed(seconds, outputs, info)` when it measures its own span (e.g. a steady state);
- an entry is a (side, case) timed once per round; a pair of entries (a, b) gives a speed-up: time(b) / time(a).

Rounds: `warmup` rounds first (dropped), then `rounds` (at least 7) timed ones; every round times every entry once,
one at a time, and the order is reversed every other round, so a drift in machine load hits both sides of a pair
alike. THE figure of a pair is the median over rounds of the per-round ratio time(b) / time(a), reported with its
min-max; "x faster" in any benchmark output means that figure.

Equal CPU: sides run one at a time, never together. By default every side is pinned to the SAME core set (`--cores`;
default: the last `--threads` cores this process may use), which is the only fair split on a 2-core machine: a side
whose DataLoader workers decode images gets exactly the cores on which the other side decodes inline. `--cores
"0;1"` gives side k the k-th set instead (on a machine with spare cores). Idle workers block on a pipe; their OpenMP
threads keep the library's wait policy (spin briefly, then sleep), as in users' runs. `OMP_WAIT_POLICY=PASSIVE`,
set here before, put every thread to sleep after each parallel region: at 2 threads it doubled the batch-1 latency
of the demo's student (21-22 vs 10-12 ms per sample, in-process), so multi-threaded figures measured something no
user sees. With one thread (most benchmarks) there are no OpenMP worker threads and the setting changed nothing.

Equality: the worker hashes each call's outputs (`digest`, after the timed span). A side must give the same digest
in every round, and a pair declared `same_outputs` must give equal digests in every round; anything else raises
`OutputMismatch` and the benchmark fails.

The result (`Session.result()`) records the per-round times and orders, digests, pairs, pinning as each worker
reports it, thread count, torch version, machine and load average before/after.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

MIN_ROUNDS = 7
"""Fewest timed rounds of a recorded figure (`--test-rounds` lowers it, for the test suite only)."""
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


class OutputMismatch(RuntimeError):
    """Two runs that must compute the same outputs did not."""


@dataclass
class Timed:
    """What a thunk returns when it times itself: its own span (seconds), its outputs, and extra facts to record."""

    seconds: float
    outputs: Any
    info: dict = field(default_factory=dict)


@dataclass
class Side:
    """One worker process: `factory` (a function of `file`) is called with `kwargs` in it."""

    name: str
    file: str
    """The benchmark file holding the factory (imported by path in the worker)."""
    factory: str
    kwargs: dict = field(default_factory=dict)
    python_path: list[str] = field(default_factory=list)
    """Folders put first on the worker's sys.path (e.g. another checkout, the official OFA port)."""
    isolated: bool = False
    """Drop PYTHONPATH and start in a temporary folder: the worker imports only `python_path` (and site-packages)."""
    env: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Entry:
    side: str
    case: str

    @property
    def key(self) -> str:
        return f"{self.side}/{self.case}"


@dataclass(frozen=True)
class Pair:
    """speed-up of `a` over `b` = time(b) / time(a), per round."""

    name: str
    a: Entry
    b: Entry
    same_outputs: bool
    """Whether a and b compute the same thing (their digests must be equal every round)."""


def digest(outputs: Any) -> str:
    """sha256 of a canonical JSON form of `outputs` (tensors and arrays as nested lists)."""
    def plain(x):
        if hasattr(x, "tolist"):
            return x.tolist()
        if isinstance(x, dict):
            return {str(k): plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x
    return hashlib.sha256(json.dumps(plain(outputs), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def machine() -> dict:
    """The machine the figures come from."""
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else ""
    return {"cpu": model or platform.machine(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}


def add_args(parser: argparse.ArgumentParser) -> None:
    """The harness options every benchmark takes."""
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS, help=f"timed rounds (>= {MIN_ROUNDS})")
    parser.add_argument("--warmup", type=int, default=1, help="rounds run first and dropped (>= 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads of every side")
    parser.add_argument("--cores", default=None, help="core set every side is pinned to, e.g. '1' or '0,1' "
                        "(default: the last --threads usable cores); 'A;B' pins side k to the k-th set")
    parser.add_argument("--test-rounds", type=int, help=argparse.SUPPRESS)  # the test suite's few rounds


@dataclass
class Settings:
    rounds: int
    warmup: int
    threads: int
    cores: list[list[int]]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Settings":
        rounds = args.test_rounds or args.rounds
        if args.test_rounds is None and rounds < MIN_ROUNDS:
            raise SystemExit(f"--rounds {rounds}: a recorded figure needs at least {MIN_ROUNDS} rounds")
        if args.warmup < 1:
            raise SystemExit("--warmup must be >= 1: the first round pays for allocations and caches")
        usable = sorted(os.sched_getaffinity(0))
        spec = args.cores or ",".join(map(str, usable[-args.threads:]))
        cores = [[int(c) for c in part.split(",") if c.strip()] for part in spec.split(";")]
        for s in cores:
            if not s or not set(s) <= set(usable):
                raise SystemExit(f"--cores {spec}: each set must be non-empty and within {usable}")
            if args.threads > len(s):
                print(f"warning: {args.threads} threads on {len(s)} core(s) {s}", file=sys.stderr)
        return cls(rounds, args.warmup, args.threads, cores)


class _Worker:
    def __init__(self, side: Side, cores: list[int], threads: int):
        env = dict(os.environ, **{k: str(threads) for k in THREAD_ENV}, TOKENIZERS_PARALLELISM="false", **side.env)
        if side.isolated:
            env.pop("PYTHONPATH", None)
        spec = {"side": side.name, "file": str(Path(side.file).resolve()), "factory": side.factory,
                "kwargs": side.kwargs, "python_path": side.python_path, "cores": cores, "threads": threads}
        self.name = side.name
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                     cwd=tempfile.gettempdir() if side.isolated else None)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"side {self.name}: worker exited (rc {self.proc.wait()}); see its stderr above")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"side {self.name} failed:\n{reply['error']}")
        return reply

    def ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=120)


class Session:
    """The workers of one benchmark run (a context manager: workers are closed at the end)."""

    def __init__(self, sides: list[Side], settings: Settings):
        self.settings = settings
        self.load_before = os.getloadavg()
        self.started = time.time()
        self.workers: dict[str, _Worker] = {}
        try:
            for k, side in enumerate(sides):
                self.workers[side.name] = _Worker(side, settings.cores[k % len(settings.cores)], settings.threads)
        except BaseException:
            self.close()
            raise
        self.times: dict[str, list[float]] = {}
        self.info: dict[str, list[dict]] = {}
        self.orders: list[list[list[str]]] = []  # per `run`, per timed round: the entries in the order timed
        self.digests: dict[str, str] = {}
        self.pairs: list[dict] = []

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for w in self.workers.values():
            w.close()

    def call(self, entry: Entry, fetch: bool = False) -> dict:
        """Run `entry` once: {"seconds", "digest", "info"} (+ "outputs" when `fetch`)."""
        return self.workers[entry.side].ask({"case": entry.case, "fetch": fetch})

    def run(self, entries: list[Entry], pairs: list[Pair]) -> list[dict]:
        """Warm-up then timed rounds over `entries` (order reversed every other round); checks outputs every round;
        returns (and records) each pair's figure."""
        s = self.settings
        again = [e.key for e in entries if e.key in self.times]
        if again:
            raise ValueError(f"{again} were timed in an earlier run: an entry's rounds are one run's")
        self.orders.append([])
        for r in range(s.warmup + s.rounds):
            order = entries if r % 2 == 0 else entries[::-1]
            seen = {e.key: self._timed(e, r >= s.warmup) for e in order}
            for p in pairs:
                if p.same_outputs and seen[p.a.key] != seen[p.b.key]:
                    raise OutputMismatch(f"{p.name}: {p.a.key} and {p.b.key} computed different outputs in round "
                                         f"{r} ({seen[p.a.key][:12]} vs {seen[p.b.key][:12]})")
            if r >= s.warmup:
                self.orders[-1].append([e.key for e in order])
        out = [self._pair(p) for p in pairs]
        self.pairs += out
        return out

    def _timed(self, entry: Entry, keep: bool) -> str:
        reply = self.call(entry)
        first = self.digests.setdefault(entry.key, reply["digest"])
        if reply["digest"] != first:
            raise OutputMismatch(f"{entry.key}: outputs changed between rounds ({first[:12]} then "
                                 f"{reply['digest'][:12]})")
        if keep:
            self.times.setdefault(entry.key, []).append(reply["seconds"])
            if reply.get("info"):
                self.info.setdefault(entry.key, []).append(reply["info"])
        return reply["digest"]

    def _pair(self, p: Pair) -> dict:
        ta, tb = self.times[p.a.key], self.times[p.b.key]
        ratios = [b / a for a, b in zip(ta, tb)]
        return {"name": p.name, "a": p.a.key, "b": p.b.key, "speedup": statistics.median(ratios),
                "speedup_min": min(ratios), "speedup_max": max(ratios), "speedup_per_round": ratios,
                "median_s": {p.a.key: statistics.median(ta), p.b.key: statistics.median(tb)},
                "same_outputs": p.same_outputs,
                "outputs": "equal every round" if p.same_outputs else "each side stable every round (sides differ)"}

    def result(self) -> dict:
        """The harness part of a benchmark's JSON."""
        s = self.settings
        return {
            "harness": {
                "rounds": s.rounds, "warmup_rounds_dropped": s.warmup, "threads": s.threads,
                "order": "every entry once per round, one at a time; order reversed every other round",
                "cores": s.cores, "pinning": {n: w.info["affinity"] for n, w in self.workers.items()},
                "torch_threads": {n: w.info.get("torch_threads") for n, w in self.workers.items()},
                "versions": {n: w.info.get("versions", {}) for n, w in self.workers.items()},
                "machine": machine(), "load_average_before": self.load_before,
                "load_average_after": os.getloadavg(), "wall_seconds": round(time.time() - self.started, 1),
                "ratio": "speedup = median over rounds of time(b) / time(a), with its min-max",
            },
            "times": self.times, "orders": self.orders, "digests": self.digests, "info": self.info,
            "pairs": self.pairs,
        }


def pair_line(p: dict) -> str:
    """`name: 1.352x faster (1.301-1.398 over 7 rounds)` (below 1: "x the speed", i.e. slower): the figure every
    benchmark prints, time(b) / time(a) per round, its median and min-max."""
    word = "faster" if p["speedup"] >= 1 else "the speed (slower)"
    return (f"{p['name']}: {p['speedup']:.3f}x {word} ({p['speedup_min']:.3f}-{p['speedup_max']:.3f} over "
            f"{len(p['speedup_per_round'])} rounds)")


def print_pairs(result: dict, note: str = "") -> None:
    """The run's settings, then one `pair_line` per pair."""
    h = result["harness"]
    print(f"\n{h['rounds']} rounds, {h['threads']} thread(s), cores {h['cores']}" + (f"; {note}" if note else ""))
    for p in result["pairs"]:
        print(pair_line(p))


def write(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


# ------------------------------------------------------------------------------------------------------ worker
def _worker(spec: dict) -> None:
    os.sched_setaffinity(0, spec["cores"])  # first: everything after runs (and forks) on these cores
    sys.modules.setdefault("timing", sys.modules[__name__])  # `from timing import Timed` in a benchmark: this one
    for p in reversed(spec["python_path"]):
        sys.path.insert(0, p)
    out = sys.stdout
    sys.stdout = sys.stderr  # the protocol owns stdout; prints of the benchmark go to stderr
    try:
        loaded = importlib.util.spec_from_file_location(f"bench_{spec['side']}", spec["file"])
        module = importlib.util.module_from_spec(loaded)
        sys.path.insert(0, str(Path(spec["file"]).parent))
        loaded.loader.exec_module(module)
        _threads(spec["threads"])
        prepare: Callable[[str], Callable[[], Any]] = getattr(module, spec["factory"])(**spec["kwargs"])
        _threads(spec["threads"])
    except BaseException:
        out.write(json.dumps({"error": traceback.format_exc()}) + "\n")
        out.flush()
        return
    torch = sys.modules.get("torch")
    versions = {"torch": getattr(torch, "__version__", None) or _installed("torch")}  # a side may run torch in a child
    if "transformers" in sys.modules:
        versions["transformers"] = sys.modules["transformers"].__version__
    out.write(json.dumps({"ready": spec["side"], "affinity": sorted(os.sched_getaffinity(0)), "versions": versions,
                          "torch_threads": torch.get_num_threads() if torch else None, "pid": os.getpid()}) + "\n")
    out.flush()
    import gc

    thunks: dict[str, Callable[[], Any]] = {}
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["case"] not in thunks:  # preparing a case (inputs, settings) is not timed
                thunks[request["case"]] = prepare(request["case"])
            thunk = thunks[request["case"]]
            gc.collect()
            start = time.perf_counter()
            outputs = thunk()
            seconds = time.perf_counter() - start
            info = {}
            if isinstance(outputs, Timed):
                seconds, info, outputs = outputs.seconds, outputs.info, outputs.outputs
            reply = {"seconds": seconds, "digest": digest(outputs), "info": info}
            if request.get("fetch"):
                reply["outputs"] = json.loads(json.dumps(outputs, default=lambda x: x.tolist()))
        except BaseException:
            reply = {"error": traceback.format_exc()}
        out.write(json.dumps(reply) + "\n")
        out.flush()


def _installed(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _threads(n: int) -> None:
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker(json.loads(sys.argv[2]))
    else:
        raise SystemExit("benchmarks/timing.py is the harness the benchmarks use (its workers run it); "
                         "run a benchmark instead, e.g. python benchmarks/student_vs_teacher.py --help")
