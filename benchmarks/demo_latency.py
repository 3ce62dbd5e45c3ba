"""How stable are the demo's ms/sample figures? Re-measure every evaluate stage of a finished demo, several times.

For each evaluate stage under OUT (its `stage_config.json`), it re-runs the stage's own latency measurement
(`pipelines.stage_kinds.measure_latency`: median over one call per test row, batch 1, after a warm-up call),
round-robin over `--rounds` rounds so that a burst of machine load hits every model alike, and prints per model the
median of each round, max/min over rounds (the goal: <= 1.15) and the speed-up over its task's teacher per round.
Writes `benchmarks/results/demo_latency.json`.

    python benchmarks/demo_latency.py runs/demo --rounds 2
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from pipelines.stage_kinds import EvaluateStageConfig, measure_latency


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="A finished demo output folder (narvl-pipe demo --out).")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "demo_latency.json")
    args = ap.parse_args()

    stages, seen = [], set()
    for cfg_file in sorted(args.out.glob("*/stage_config.json")):
        if cfg_file.resolve() in seen:  # OUT/<name> links to OUT/<name>-<fingerprint>
            continue
        seen.add(cfg_file.resolve())
        record = json.loads(cfg_file.read_text())
        if record["kind"] == "evaluate":
            stages.append((record["name"], EvaluateStageConfig(**record["config"])))
    if not stages:
        raise SystemExit(f"no finished evaluate stages under {args.out}")
    rounds: dict[str, list[float]] = {name: [] for name, _ in stages}
    for r in range(args.rounds):
        for name, cfg in stages:
            ms, calls = measure_latency(cfg)
            rounds[name].append(ms)
            print(f"round {r + 1}: {name}: {ms:.2f} ms/sample (median of {calls} calls)", flush=True)

    teachers = {cfg.task: name for name, cfg in stages if "teacher" in name}
    rows = []
    print(f"\n{'stage':<28} " + " ".join(f"{'round ' + str(i + 1):>9}" for i in range(args.rounds))
          + f" {'max/min':>8}  speed-up over teacher per round")
    for name, cfg in stages:
        ms = rounds[name]
        ref = rounds.get(teachers.get(cfg.task, ""), [])
        speedups = [t / m for t, m in zip(ref, ms)] if ref else []
        spread = max(ms) / min(ms)
        rows.append({"stage": name, "task": cfg.task, "ms_per_sample": ms, "max_over_min": spread,
                     "speedup_over_teacher": speedups})
        print(f"{name:<28} " + " ".join(f"{m:9.2f}" for m in ms) + f" {spread:8.2f}  "
              + " ".join(f"{s:.2f}x" for s in speedups))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({
        "out": str(args.out), "rounds": args.rounds, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(), "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.results}")


if __name__ == "__main__":
    main()
