#!/usr/bin/env bash
# GPU smoke check (CUDA only): the shapes world, a briefly trained OFA-tiny teacher (bf16), then
#   distill: float32/eager/dynamic (the reference) vs float16 and bfloat16 with SDPA + static cache (torch.compile'd
#            by generate() on CUDA) and bfloat16 + SDPA + dynamic cache: rows/s, peak GPU memory, token agreement
#            with the float32 targets;
#   train-student: bf16 mixed precision: median step time, peak GPU memory.
# Prints one table; writes $OUT/gpu_smoke.json. About 5 minutes on one recent GPU.
#
#   bash benchmarks/gpu_smoke.sh [OUT]        # OUT defaults to a new temporary folder
#   ROWS=4096 BATCH=64 STEPS=200 bash benchmarks/gpu_smoke.sh
#   ALLOW_CPU=1 ROWS=32 BATCH=8 STEPS=3 bash benchmarks/gpu_smoke.sh   # only to check the script itself on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
OUT=${1:-$(mktemp -d)}
ROWS=${ROWS:-2048}
BATCH=${BATCH:-64}
STEPS=${STEPS:-100}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
$PY -c "import os, sys, torch; sys.exit(0 if torch.cuda.is_available() or os.environ.get('ALLOW_CPU') else
         'gpu_smoke.sh needs CUDA (torch.cuda.is_available() is False)')"
$PY -c "import torch; print('device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu',
        '| torch', torch.__version__)"

# Runs one library stage in-process (KIND: train-teacher, distill or train-student; CONFIG: its config dataclass's
# fields as JSON, the fields the CLI options set) and appends {stage, seconds, peak_gpu_mb} to $OUT/stages.jsonl.
stage() {
  local name=$1 kind=$2 config=$3
  $PY - "$name" "$OUT/stages.jsonl" "$kind" "$config" <<'EOF'
import json, sys, time
import torch
from distill.run import DistillConfig, run_distill
from student.train_student import StudentTrainConfig, train_student
from student.train_teacher import TeacherTrainConfig, train_teacher
name, log, kind, config = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
run = {"train-teacher": lambda c: train_teacher(TeacherTrainConfig(**c)),
       "distill": lambda c: run_distill(DistillConfig(**c)),
       "train-student": lambda c: train_student(StudentTrainConfig(**c))}[kind]
cuda = torch.cuda.is_available()
if cuda:
    torch.cuda.reset_peak_memory_stats()
t0 = time.perf_counter()
run(config)
record = {"stage": name, "seconds": time.perf_counter() - t0,
          "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0}
with open(log, "a") as f:
    f.write(json.dumps(record) + "\n")
EOF
}

rm -f "$OUT/stages.jsonl"
$PY -c "import sys; from distill.shapes import ShapesConfig, write_shapes
write_shapes(sys.argv[1], ShapesConfig(n_train=int(sys.argv[2]), n_val=64, n_test=64, size=64), overwrite=True)" \
  "$OUT/shapes" "$ROWS"
TRAIN="\"max_steps\": $STEPS, \"batch_size\": $BATCH, \"mixed_precision\": \"bf16\", \"eval_limit\": 0,
       \"save_every\": $STEPS, \"report_to\": \"none\""
stage teacher-bf16 train-teacher "{\"task\": \"caption\", \"data\": \"$OUT/shapes\", \"output_dir\": \"$OUT/teacher\",
  \"arch\": \"tiny\", \"resolution\": 64, \"lr\": 1e-4, $TRAIN}"
DISTILL="\"task\": \"caption\", \"teacher\": \"$OUT/teacher\", \"data\": \"$OUT/shapes\", \"split\": \"train\",
         \"batch_size\": $BATCH, \"shard_size\": $ROWS, \"num_workers\": 4, \"overwrite\": true"
stage distill-fp32-eager-dynamic distill "{$DISTILL, \"out\": \"$OUT/d-fp32\"}"
stage distill-fp16-sdpa-static distill "{$DISTILL, \"out\": \"$OUT/d-fp16\", \"dtype\": \"float16\",
  \"attn_implementation\": \"sdpa\", \"cache_implementation\": \"static\"}"
stage distill-bf16-sdpa-static distill "{$DISTILL, \"out\": \"$OUT/d-bf16\", \"dtype\": \"bfloat16\",
  \"attn_implementation\": \"sdpa\", \"cache_implementation\": \"static\"}"
stage distill-bf16-sdpa-dynamic distill "{$DISTILL, \"out\": \"$OUT/d-bf16-dyn\", \"dtype\": \"bfloat16\",
  \"attn_implementation\": \"sdpa\"}"
stage student-bf16 train-student "{\"task\": \"caption\", \"data\": \"$OUT/d-fp32\", \"init\": \"$OUT/teacher\",
  \"output_dir\": \"$OUT/student\", $TRAIN}"

$PY - "$OUT" "$ROWS" <<'EOF'
import json, statistics, sys
from pathlib import Path
from datasets import load_from_disk
out, rows = Path(sys.argv[1]), int(sys.argv[2])
stages = {r["stage"]: r for r in map(json.loads, (out / "stages.jsonl").read_text().splitlines())}
ref = [r["target_ids"] for r in load_from_disk(str(out / "d-fp32")).select_columns(["target_ids"])]
print(f"\n| stage | wall s | rows/s or step s | peak GPU MB | token / sequence agreement with fp32 |\n|---|---|---|---|---|")
for name, r in stages.items():
    extra, rate = "", ""
    folder = {"distill-fp32-eager-dynamic": "d-fp32", "distill-fp16-sdpa-static": "d-fp16",
              "distill-bf16-sdpa-static": "d-bf16", "distill-bf16-sdpa-dynamic": "d-bf16-dyn"}.get(name)
    if folder:
        ids = [r_["target_ids"] for r_ in load_from_disk(str(out / folder)).select_columns(["target_ids"])]
        same = sum(a == b for a, b in zip(ids, ref))
        tok = sum(x == y for a, b in zip(ids, ref) for x, y in zip(a, b)) / sum(max(len(a), len(b)) for a, b in zip(ids, ref))
        r.update(rows_per_s=rows / r["seconds"], token_agreement=tok, sequence_agreement=same / len(ref))
        rate, extra = f"{r['rows_per_s']:.1f} rows/s", f"{tok:.1%} / {same / len(ref):.1%}"
    else:
        run = out / ("teacher" if name.startswith("teacher") else "student")
        logs = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
        r["median_step_s"] = statistics.median(l["sec_per_step"] for l in logs[5:] or logs)
        rate = f"{r['median_step_s'] * 1000:.1f} ms/step"
    print(f"| {name} | {r['seconds']:.1f} | {rate} | {r['peak_gpu_mb']:.0f} | {extra} |")
(out / "gpu_smoke.json").write_text(json.dumps(stages, indent=2) + "\n")
print(f"(distill wall times include model load and, for static caches, torch.compile) -> {out / 'gpu_smoke.json'}")
EOF
