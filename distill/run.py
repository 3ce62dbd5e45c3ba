"""The resumable, sharded teacher run behind `narvl-pipe distill`: `run_distill(DistillConfig(...))`.

Order of work (each rank of a `torchrun`/`accelerate launch` job, or one plain process):
1. open and validate the source, resolve the teacher folder and its revision, resolve the generation config;
   nothing here loads the model, so a bad split/column/teacher fails in seconds with a one-line `UserError`;
2. rank 0 checks `DIR` (`distill.manifest.claim`): a complete output of this very run is a no-op that writes
   nothing (a read-only `DIR` is fine); otherwise `DIR` must be writable, rank 0 takes `DIR/.lock` (a second run on
   the same `--out` is refused; the lock is rank 0's alone, see `distill.locks`), compares the run identity with an
   existing `manifest.json` (a different teacher/task/generation/source is refused unless `--overwrite`; a manifest
   of a run that computed nothing is replaced) and broadcasts the verdict so every rank of this run agrees; ranks
   of one run never refuse each other;
3. every rank lists the complete shards, then a barrier (so all ranks see the same set);
4. the pending shards are dealt round robin to the ranks (`distill.shards.assign_shards`); each rank loads the frozen
   teacher (`model.to(device).eval()`, no DDP), decodes images and tokenises prompts in DataLoader workers (which
   die with their parent, `distill.workers`), runs `generate()` under `torch.inference_mode()` and writes its own
   shards; generations are never gathered (the loop lives in `distill.teacher_loop`);
5. barrier, then rank 0 assembles `DIR` into a `save_to_disk` folder (see `distill.shards` for the layout),
   finalises the manifest and removes the shards.

Row schema of the output: `id, task, prompt`, the task inputs, `target` (the teacher's best text: the top beam, ranked
by beam search's length-normalised score with length_penalty 1.0, as OFA ranks; for entailment the best-scoring
candidate of yes/no/maybe, by teacher-forced log-prob, as OFA evaluates), `target_ids` (ids
after the decoder start token, ending with EOS), `teacher_logprob` (sum of the per-token log-probs of `target_ids`
under the generation's logits processors, NOT length-normalised; divide by `target_len` for a per-token score),
`target_len` (= len(target_ids)), the source's references (`captions`/`answers`/`box`/`label` when present),
`source_index`, `image_path` (the source's file path, or None), `image` (the original encoded image, `datasets.Image`;
omitted with `images=False`) and `nbest` (list of {text, logprob}, only when `num_return_sequences > 1`).
Batches never cross shards, so a row's batch (hence its padding and result) does not depend on the process count or
on where a crashed run resumed. Row-for-row equality across runs still assumes the same kernels (device, dtype,
intra-op thread count): with a near-uniform (e.g. untrained) teacher, float differences can flip near-tied beams.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill import manifest as manifest_lib
from distill import shards as sh
from distill.errors import UserError, error_reason
from distill.outputs import check_output_dir
from distill.sources import REFERENCE_COLUMNS, ids_fingerprint, open_source, prompt_columns
from distill.tasks.vqa import read_answers  # noqa: F401  (part of this module's API: evaluate/predict use it)

# DistillConfig fields that choose how the teacher runs, and their allowed values (the first is the default).
TEACHER_CHOICES = {
    "dtype": ("float32", "bfloat16", "float16"),
    "attn_implementation": ("eager", "sdpa"),
    "cache_implementation": ("dynamic", "static"),
}
_WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
)


@dataclass
class DistillConfig:
    """Everything `narvl-pipe distill` takes. `None` generation fields mean the task's OFA evaluation default."""

    task: str
    """One of caption, vqa, grounding, entailment."""
    teacher: str
    """Teacher folder (model + tokenizer + image processor, `save_pretrained` layout) or a Hub model id."""
    data: str
    """Data source (see `distill.sources`)."""
    out: str
    """Output folder; `datasets.load_from_disk(out)` opens it when the run is complete."""
    split: str = "train"
    """Split of the source to distil, or a union such as `train+restval`."""
    batch_size: int = 32
    """Rows per generate() call (per process)."""
    num_beams: int | None = None
    """Beam size (task default: 5)."""
    max_new_tokens: int | None = None
    """Longest generated target, EOS included (task default)."""
    no_repeat_ngram_size: int | None = None
    """Forbid repeating n-grams of this size (task default; 0 = off)."""
    num_return_sequences: int = 1
    """Keep the n best beams as `nbest` (1 = only the best, no `nbest` column)."""
    answers: str | None = None
    """VQA candidate answers (required for vqa): OFA's `trainval_ans2label.pkl`, a JSON list/dict, or one per line."""
    vqa_mode: str = "beam"
    """VQA inference as OFA: `beam` (beam search over the answer trie, its --beam-search-vqa-eval) or `allcand`
    (every candidate scored, its default validation)."""
    limit: int | None = None
    """Distil only the first N rows of the split."""
    shard_size: int = 1000
    """Source rows per output shard (the unit of resume and of work sharing between processes)."""
    images: bool = True
    """Store the encoded image in each row; with False only `image_path`/`source_index` refer to it."""
    columns: dict[str, str] = field(default_factory=dict)
    """Column mapping canonical -> source column, e.g. {"captions": "text"}."""
    resolution: int | None = None
    """Square image size fed to the teacher (default: the teacher's image processor, else the task's)."""
    overwrite: bool = False
    """Discard an existing output made with another configuration instead of refusing."""
    num_workers: int = 2
    """DataLoader worker processes decoding images and tokenising prompts (0 = in the main process)."""
    image_root: str | None = None
    """Root folder for relative image paths (COCO-Karpathy JSON, path columns); default: the source's folder."""
    revision: str | None = None
    """Hub revision of the teacher (ignored for a local folder)."""
    flush_every: int = 256
    """Flush the shard in progress every ~N rows (rounded up to whole batches): the most a crash can lose."""
    progress: bool = True
    """Show a tqdm bar on the main process."""
    dtype: str = "float32"
    """Teacher weights' dtype: float32, bfloat16 or float16 (the weights are loaded in it; no autocast then).
    Half types are faster on GPUs and on CPUs with bf16 units, but can change some tokens (see
    benchmarks/teacher_generate.py for the agreement rate)."""
    attn_implementation: str = "eager"
    """Teacher attention: eager (OFA's matmul + softmax) or sdpa (`scaled_dot_product_attention`, fused on GPU;
    the same maths)."""
    cache_implementation: str = "dynamic"
    """generate()'s KV cache: dynamic, or static (preallocated; on CUDA generate() then compiles the decoding step
    with torch.compile). The same maths."""


@dataclass
class DistillSummary:
    """What a run did (the CLI prints `line()`)."""

    out: str
    """The output folder."""
    rows: int
    """Rows in the finished dataset (all runs)."""
    failures: int
    """Quarantined source rows (all runs)."""
    shards: int
    """Shards of the dataset."""
    new_rows: int
    """Rows generated by this run (all ranks)."""
    wall_time_s: float
    """Wall time of this run."""
    noop: bool
    """True when the output was already complete (no model was loaded)."""

    def line(self) -> str:
        rate = self.new_rows / self.wall_time_s if self.wall_time_s > 0 else 0.0
        what = "already complete, nothing to do" if self.noop else f"{self.new_rows} rows generated this run"
        return (f"distill: {self.rows} rows, {self.failures} quarantined, {self.shards} shards in {self.out} "
                f"({what}; {self.wall_time_s:.1f} s, {rate:.1f} rows/s)")


# ---------------------------------------------------------------------------------------------------- teacher
def resolve_teacher(teacher: str, revision: str | None) -> tuple[Path, dict]:
    """The teacher folder and its identity ({"id", "revision"} for the Hub, {"id", "sha256"} for a folder).

    Checks that the folder holds a config and tokenizer files, without loading anything.
    """
    from distill.hub_ids import resolve_model_folder

    folder, ident = resolve_model_folder(teacher, revision, field="--teacher")
    has_bpe = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    if not ((folder / "tokenizer.json").is_file() or has_bpe):
        raise UserError(f"teacher {teacher} has no tokenizer files (tokenizer.json, or vocab.json + merges.txt)")
    if "revision" not in ident:
        h = hashlib.sha256()
        for name in ("config.json", *_WEIGHT_FILES):
            f = folder / name
            if f.is_file():
                h.update(name.encode())
                with open(f, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 24), b""):
                        h.update(chunk)
        ident["sha256"] = h.hexdigest()
    return folder, ident


def _teacher_resolution(folder: Path) -> int | None:
    f = folder / "preprocessor_config.json"
    if f.is_file():
        size = json.loads(f.read_text()).get("size")
        return int(size["height"]) if isinstance(size, dict) else (int(size) if size else None)
    return None


def generation_settings(config: DistillConfig, task, tokenizer, candidates: list[str] | None) -> tuple[dict, dict]:
    """(`generate()` kwargs, their JSON record for the manifest): the task's OFA evaluation settings with its
    decoding constraint (`Task.generate_kwargs`), overridden by the config's explicit values."""
    gen = dict(task.generate_kwargs(tokenizer, candidates))
    for name in ("num_beams", "max_new_tokens", "no_repeat_ngram_size"):
        value = getattr(config, name)
        if value is not None:
            gen[name] = value
    limit = len(task.candidates) if task.name == "entailment" else gen.get("num_beams", 1)  # entailment: scored
    if config.num_return_sequences > limit:
        raise UserError(f"--num-return-sequences {config.num_return_sequences} exceeds --num-beams {limit}")
    gen["num_return_sequences"] = config.num_return_sequences
    record = {k: (v if isinstance(v, (int, float, str, bool, type(None), list)) else f"<{type(v).__name__}>")
              for k, v in gen.items()}
    if "candidates" in gen:
        record["candidates"] = f"{len(gen['candidates'])} answers (see answers_sha256)"
    if config.vqa_mode != "beam" and task.name != "vqa":
        raise UserError("--vqa-mode applies to --task vqa only")
    if task.name == "vqa":
        gen["vqa_mode"] = record["vqa_mode"] = config.vqa_mode
        from distill.tasks.vqa import VQA_MODES

        if config.vqa_mode not in VQA_MODES:
            raise UserError(f"--vqa-mode must be one of {', '.join(VQA_MODES)}, got {config.vqa_mode!r}")
    if "prefix_allowed_tokens_fn" in gen:
        record["prefix_allowed_tokens_fn"] = (
            f"answer trie over {len(candidates)} answers" if candidates is not None else f"{task.name} constraint")
    return gen, record


def vqa_candidates(answers: str | None, task) -> list[str] | None:
    """VQA's answer list, from the `answers` file (OFA decodes over its fixed trainval answer list, not the split's);
    None for other tasks."""
    if answers:
        if task.name != "vqa":
            raise UserError("--answers applies to --task vqa only")
        return read_answers(answers)
    if task.name != "vqa":
        return None
    raise UserError("--task vqa needs --answers FILE: the candidate answer list the teacher decodes over (OFA's "
                    "dataset/vqa_data/trainval_ans2label.pkl from OFA-Sys's VQA data, or a text/JSON list)")


# ---------------------------------------------------------------------------------------------------- schema
def output_features(source_features, task, images: bool, nbest: bool):
    from datasets import Features, Image, List, Value

    feats = {"id": Value("string"), "task": Value("string"), "prompt": Value("string")}
    for col in prompt_columns(task):
        feats[col] = Value("string")
    feats.update({
        "target": Value("string"), "target_ids": List(Value("int32")), "teacher_logprob": Value("float32"),
        "target_len": Value("int32"),
    })
    for col in REFERENCE_COLUMNS:
        if col in source_features:
            feats[col] = source_features[col]
    feats["source_index"] = Value("int64")
    feats["image_path"] = Value("string")
    if images:
        feats["image"] = Image()
    if nbest:
        feats["nbest"] = List({"text": Value("string"), "logprob": Value("float32")})
    return Features(feats)


# ---------------------------------------------------------------------------------------------------- the run
def _broadcast(state, value):
    if state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def run_distill(config: DistillConfig) -> DistillSummary:
    """Run (or resume, or no-op) the teacher over the source; see the module docstring."""
    from distill.tasks import get_task

    t0 = time.time()
    state = _process_state()
    task = get_task(config.task)
    if config.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {config.batch_size}")
    for name, allowed in TEACHER_CHOICES.items():
        if getattr(config, name) not in allowed:
            raise UserError(f"{name} must be one of {', '.join(allowed)}, got {getattr(config, name)!r}")
    check_output_dir(config.out, writable=False)  # an existing file: refused now; writability once work is needed
    with state.main_process_first():  # rank 0 builds any datasets cache (TSV/JSON parsing, maps) the others reuse
        ds = open_source(config.data, config.split, config.columns, task, config.image_root, config.limit)
    folder, teacher_id = resolve_teacher(config.teacher, config.revision)
    from distill.ofa.tokenization_ofa import load_ofa_tokenizer

    tokenizer = load_ofa_tokenizer(folder)
    candidates = vqa_candidates(config.answers, task)
    gen, gen_record = generation_settings(config, task, tokenizer, candidates)
    resolution = config.resolution or _teacher_resolution(folder) or task.resolution
    plan = sh.plan_shards(len(ds), config.shard_size)
    out = Path(config.out)
    data = str(Path(config.data).resolve()) if Path(config.data).exists() else config.data
    key = {
        "task": task.name, "teacher": teacher_id, "generation": gen_record, "resolution": resolution,
        "answers_sha256": hashlib.sha256("\n".join(candidates).encode()).hexdigest() if candidates else None,
        "data": data, "split": config.split, "columns": dict(config.columns), "limit": config.limit,
        "source_ids_sha256": ids_fingerprint(ds), "num_rows": len(ds), "shard_size": config.shard_size,
        "images": config.images,
    }
    if config.dtype != "float32":  # half weights change outputs; absent for float32, so older outputs still resume
        key["dtype"] = config.dtype
    # Released on every exit, errors included: an in-process caller (tests, notebooks) may start another run.
    with sh.RunLock(out) as lock:
        features = output_features(ds.features, task, config.images, config.num_return_sequences > 1)
        verdict: tuple[str, Any] = ("work", None)
        if state.is_main_process:
            try:
                finished = manifest_lib.claim(out, lock, key, ds, config, len(plan))
                if finished is not None:
                    verdict = ("noop", DistillSummary(str(out), finished["rows"], finished["failures"], len(plan),
                                                      0, time.time() - t0, noop=True))
            except UserError as err:
                verdict = ("error", str(err))
        verdict = _broadcast(state, verdict)
        if verdict[0] == "error":
            raise UserError(verdict[1])
        if verdict[0] == "noop":
            return verdict[1]

        # Assembled but the manifest not final: a crash after the last shard; nothing is left to generate.
        done = set(range(len(plan))) if sh.is_assembled(out) else sh.completed_shards(out, len(plan))
        state.wait_for_everyone()  # every rank has listed the same complete shards before anyone writes
        pending = [i for i in range(len(plan)) if i not in done]
        mine = sh.assign_shards(pending, state.process_index, state.num_processes)
        new_rows = 0
        if pending:
            from distill.teacher_loop import generate_shards

            new_rows = generate_shards(config, task, ds, plan, mine, features, folder, tokenizer, gen, resolution,
                                       state)
        state.wait_for_everyone()
        new_rows = _sum_over_ranks(state, new_rows)
        summary = None
        if state.is_main_process:
            if not sh.is_assembled(out):
                sh.assemble(out, len(plan), features, config.split)
            rows, failures = sh.counts(out)
            manifest = sh.read_json(out / sh.MANIFEST)
            wall = time.time() - t0
            manifest.update({
                "status": "complete", "rows": rows, "failures": failures, "shards": len(plan),
                "shards_complete": len(plan), "wall_time_s": round(manifest.get("wall_time_s", 0.0) + wall, 3),
                "last_run": {"wall_time_s": round(wall, 3), "new_rows": new_rows, "world_size": state.num_processes},
            })
            sh.write_json(out / sh.MANIFEST, manifest)
            sh.remove_shards(out)  # the dataset now lives in the assembled files, once
            summary = DistillSummary(str(out), rows, failures, len(plan), new_rows, wall, noop=not pending)
        return _broadcast(state, summary)


def _process_state():
    """accelerate's process state. `PartialState` only treats a torchrun/accelerate CPU job as multi-process when
    told `cpu=True`: do so when ACCELERATE_USE_CPU is set or no accelerator exists."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.accelerator.is_available())


def _sum_over_ranks(state, value: int) -> int:
    if state.num_processes == 1:
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.int64, device=state.device)
    dist.all_reduce(t)
    return int(t.item())
