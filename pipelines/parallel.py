"""Independent stages at once: the scheduler behind `narvl-pipe run --jobs N` (`pipelines.stages.run_pipeline`).

A stage starts as soon as every stage it references is complete, in a child process of its own, while at most `jobs`
run. The cache rules do not change (each child runs `pipelines.stages.execute_stage`, which writes the completion
marker last); what changes is only when stages run and with how many threads:

- The CPU is shared, not oversubscribed: a stage gets `threads // k` torch threads, where `k` is how many stages
  could compute at that moment (running + ready, at most `jobs`), so a stage that runs alone (a pre-training nothing
  else waits beside) keeps every thread. The count is fixed when the stage starts.
- A kind marked `exclusive` (evaluate: it times the model) runs alone with every thread, light stages included, so
  its latency is measured as in a sequential run and two timed models never share the CPU. A `light` kind (data,
  baseline, report) runs beside the other kinds on one thread and takes no share.
- Each child writes its output (progress bars included) to `OUT/logs/<stage>.log`; the runner prints one line per
  start and per finish.
- A failed stage stops new starts; the stages already running finish (and stay cached), then the run fails naming
  the stage, its log and its last line. Nothing already computed is lost.

Children come from a `forkserver` that has imported torch once, so a stage does not pay torch's import.
Thread counts change float rounding, not the recipe: a stage's artifact is the same computation as in a sequential
run, up to that rounding.
"""
from __future__ import annotations

import multiprocessing
import os
import pickle
import sys
import traceback
from multiprocessing.connection import wait
from pathlib import Path
from typing import Callable

import torch

from distill.errors import UserError
from distill.workers import DieWithParent

LOG_DIR = "logs"
_PRELOAD = ["torch"]
"""What the forkserver imports once for every child. Not the stage kinds: with `pipelines.stage_kinds` preloaded, an
evaluate stage in a child timed the caption teacher at 48 ms/sample at batch 1 against 38-39 ms with `torch` alone
or in a spawned process (something in that import chain leaves state a forked child runs slower with)."""


def _child(stage_blob: bytes, kind_name: str | None, execute: Callable, find_kind: Callable, threads: int,
           log_path: str, die_with_runner: DieWithParent) -> None:
    """One stage in a child process: output to its log file, `threads` torch threads, exit code 1 on failure.
    `execute` and `find_kind` arrive pickled by reference (the runner's own functions: no import cycle here)."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)  # the C level too (OpenMP, Java of the metrics)
    os.dup2(fd, 2)
    die_with_runner(0)  # a killed runner (kill -9) leaves no stage running on its own, as with --jobs 1
    os.environ["OMP_NUM_THREADS"] = str(threads)  # DataLoader workers and subprocesses read it
    torch.set_num_threads(threads)
    stage = pickle.loads(stage_blob)
    if kind_name is not None:  # a kind that does not pickle (the built-ins' lambdas): found again by name
        stage.kind = find_kind(kind_name)
    try:
        execute(stage)
    except BaseException as err:  # noqa: BLE001 - reported through the log and the exit code
        traceback.print_exc()
        print(f"{type(err).__name__}: {err}", flush=True)
        sys.exit(1)
    # A normal return: multiprocessing then runs its finalizers, which release the semaphores the stage created
    # (tqdm's lock); an os._exit left them to the resource tracker, which warned about leaks at shutdown.
    sys.stdout.flush()
    sys.stderr.flush()


def _blob(stage) -> tuple[bytes, str | None]:
    try:
        return pickle.dumps(stage), None
    except (pickle.PicklingError, AttributeError, TypeError):
        bare = type(stage)(stage.spec, None, stage.fingerprint, stage.dir, stage.config)
        return pickle.dumps(bare), stage.kind.name


def _last_line(path: Path) -> str:
    if not path.is_file():  # it died before opening its log (e.g. a kind that could not be unpickled)
        return "the stage's process died before it started (see the messages above)"
    lines = [ln.strip() for ln in path.read_text(errors="replace").replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-1] if lines else "(empty log)"


def run_parallel(todo: list, deps: dict[str, list[str]], done: set[str], jobs: int, out: Path,
                 execute: Callable, find_kind: Callable, start_log: Callable, finish: Callable) -> None:
    """Run the planned stages `todo` (in pipeline order), `jobs` at a time, each once the stages in `deps[name]`
    are in `done`: `execute(stage)` in a child (a module-level function: it is pickled by reference), with
    `find_kind(name)` for kinds that do not pickle. `start_log(stage, note)` is called before each start (it prepares the folder),
    `finish(stage)` in this process after each success."""
    threads = torch.get_num_threads()
    logs = out / LOG_DIR
    logs.mkdir(exist_ok=True)
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
    else:  # Windows: each stage pays torch's import
        ctx = multiprocessing.get_context("spawn")
    waiting = list(todo)
    running: dict[str, tuple] = {}
    failed: list[tuple] = []
    while waiting or running:
        ready = [s for s in waiting if all(d in done for d in deps[s.spec.name])] if not failed else []
        for stage in ready:
            if any(s.kind.exclusive for s, _ in running.values()):
                break
            busy = [s for s, _ in running.values() if not s.kind.light]
            if stage.kind.exclusive:
                if running:
                    break  # it waits for the CPU to be free (light stages too); the stages after it wait behind it
                n = threads
            elif stage.kind.light:
                n = 1
            elif len(busy) >= jobs:
                continue
            else:  # its share: the stages that could compute beside it now
                beside = [s for s in ready if s in waiting and not (s.kind.light or s.kind.exclusive)]
                n = max(1, threads // min(jobs, len(busy) + len(beside)))
            log_path = logs / f"{stage.spec.name}.log"
            start_log(stage, f"{n} thread{'s' if n > 1 else ''}, log {log_path}")  # prepares its folder
            blob, kind_name = _blob(stage)
            proc = ctx.Process(target=_child, args=(blob, kind_name, execute, find_kind, n, str(log_path),
                                                    DieWithParent(keep_signals=True)), name=stage.spec.name)
            proc.start()
            running[stage.spec.name] = (stage, proc)
            waiting.remove(stage)
            if stage.kind.exclusive:
                break
        if not running:
            break  # only stages behind a failure are left
        wait([p.sentinel for _, p in running.values()])
        for name, (stage, proc) in list(running.items()):
            if proc.exitcode is None:
                continue
            del running[name]
            proc.join()
            if proc.exitcode == 0:
                done.add(name)
                finish(stage)
            else:
                failed.append((stage, logs / f"{name}.log"))
    if failed:
        stage, log_path = failed[0]
        raise UserError(f"stage {stage.spec.name!r} failed: {_last_line(log_path)} (full log: {log_path}); "
                        "finished stages are cached, re-run the same command to resume")


__all__ = ["run_parallel", "LOG_DIR"]
