"""How stable are the demo's ms/sample figures, and its speed-ups? Re-measure every evaluate stage of a finished demo
with the harness (`benchmarks/timing.py`).

Each evaluate stage under OUT (its `stage_config.json`) becomes one pinned worker process holding its model and its
test rows; a call re-runs the stage's own latency measurement (`student.latency.time_calls`: one call per batch of
rows at the batch size, after a warm-up call) and reports the median ms/sample over those calls. Rounds are
interleaved with the order reversed every other round, and each student's speed-up over its task's teacher (the
`*teacher-beam5*` stage when there is one) is the median of the paired per-round ratios, with its min-max. Writes
`benchmarks/results/demo_latency.json`.

    python benchmarks/demo_latency.py runs/demo [--batches 1 8 64] [--rounds 7]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import timing  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "demo_latency.json"


def side(model: str, task: str, data: str, split: str, limit: int | None, num_beams: int | None,
         answers: str | None, latency_limit: int | None):
    """A harness side: one evaluate stage's model on its rows; case `bN`: its latency at batch N (seconds/sample)."""
    from distill.sources import open_source
    from distill.tasks import get_task
    from student.evaluate import open_for_task
    from student.latency import time_calls

    t = get_task(task)
    lm, candidates = open_for_task(model, t, answers=answers, device="cpu")
    settings = lm.settings(t, candidates, {"num_beams": num_beams})
    lm.load()
    rows = [dict(r) for r in open_source(data, split, None, t, limit=limit)]
    rows = rows[:latency_limit] if latency_limit else rows

    def prepare(case: str):
        def run():
            calls = time_calls(lm, t, rows, int(case[1:]), settings)
            return timing.Timed(statistics.median(calls.ms_per_sample) / 1000.0, calls.texts,
                                {"calls": len(calls.ms_per_sample)})
        return run
    return prepare


def stages(out: Path) -> dict[str, dict]:
    """Stage name -> its evaluate config, for every finished evaluate stage under `out`."""
    found, seen = {}, set()
    for cfg_file in sorted(out.glob("*/stage_config.json")):
        if cfg_file.resolve() in seen:  # OUT/<name> links to OUT/<name>-<fingerprint>
            continue
        seen.add(cfg_file.resolve())
        record = json.loads(cfg_file.read_text())
        if record["kind"] == "evaluate" and (cfg_file.parent / "metrics.json").is_file():
            found[record["name"]] = record["config"]
    if not found:
        raise SystemExit(f"no finished evaluate stages under {out}")
    return found


def reference(names: list[str]) -> str | None:
    """A task's teacher stage: the beam-5 one when there are several."""
    teachers = [n for n in names if "teacher" in n]
    return next((n for n in teachers if "beam5" in n), teachers[0] if teachers else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="A finished demo output folder (narvl-pipe demo --out).")
    ap.add_argument("--batches", nargs="+", type=int, help="batch sizes (default: each stage's latency_batch_sizes)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    timing.add_args(ap)
    args = ap.parse_args()
    settings = timing.Settings.from_args(args)
    configs = stages(args.out)
    keys = ("model", "task", "data", "split", "limit", "num_beams", "answers", "latency_limit")
    sides = [timing.Side(name, __file__, "side", {k: cfg.get(k) for k in keys}, python_path=[str(REPO)])
             for name, cfg in configs.items()]
    entries, pairs = [], []
    for name, cfg in configs.items():
        for b in args.batches or cfg.get("latency_batch_sizes") or [cfg.get("latency_batch_size", 1)]:
            entries.append(timing.Entry(name, f"b{b}"))
    for task in dict.fromkeys(cfg["task"] for cfg in configs.values()):
        names = [n for n, cfg in configs.items() if cfg["task"] == task]
        ref = reference(names)
        for name in names:
            for e in (e for e in entries if e.side == name and ref and name != ref):
                pairs.append(timing.Pair(f"{name} vs {ref} at batch {e.case[1:]}", e, timing.Entry(ref, e.case),
                                         same_outputs=False))
    with timing.Session(sides, settings) as session:
        session.run(entries, [p for p in pairs if p.b in entries])
        result = session.result()
    for key, times in result["times"].items():
        ms = [1000 * t for t in times]
        print(f"{key:<36} median {statistics.median(ms):8.2f} ms/sample, max/min over rounds {max(ms) / min(ms):.2f}")
    timing.print_pairs(result)
    timing.write(args.results, {"benchmark": "demo_latency", "out": str(args.out), "stages": configs, **result})
    print(f"\nwrote {args.results}")


if __name__ == "__main__":
    main()
