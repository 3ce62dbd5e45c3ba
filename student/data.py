"""Training and evaluation rows -> model inputs, shared by the student (Query-CTC) and the teacher (cross-entropy).

A row is either canonical (docs/ARCHITECTURE.md) or distilled (canonical prompt columns + `target`, `target_ids`,
`teacher_logprob`, `target_len`, and the source references). `TaskRows` encodes one row on access: OFA's prompt
tokenised as `<s> prompt </s>`, the image through `OFAImageProcessor`, and the target ids (ending with EOS) taken from
the teacher (`target`) or from the references (`references`, a seeded random one per draw for captions).

Unusable rows (an image that cannot be read, no reference) are skipped, not fatal: `SkipLog` records them as
distill's quarantine does (`{"id", "index", "reason"}`), and only a set with no usable row left is an error.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from accelerate import PartialState
from datasets import Image
from accelerate.utils import parse_flag_from_env

from distill.errors import UserError
from distill.images import ImageLoadError
from distill.jsonio import atomic_write_text
from distill.owner_formats import folder_kind
from distill.sources import load_saved, open_source, pick_split
from student.checkpoints import latest_checkpoint
from student.distilled import distill_output, needs_reencoding, target_vocabulary  # noqa: F401  (re-exported)

__all__ = ["TARGET_COLUMNS", "FilterReport", "needs_reencoding", "target_vocabulary", "SkipLog", "load_training_data",
           "is_distilled", "filter_rows", "reference_problem", "TaskRows", "collate"]

SKIPPED_FILE = "skipped.jsonl"
"""Training runs record their skipped rows in `OUTPUT_DIR/skipped.jsonl`."""
TARGET_COLUMNS = ("target", "references")
"""`target`: the teacher's output (KD, columns `target_ids`/`target`); `references`: the raw dataset labels."""


def is_distilled(ds) -> bool:
    """A distilled dataset carries the teacher's targets."""
    return "target_ids" in ds.column_names or "target" in ds.column_names


def load_training_data(src: str | os.PathLike, split: str = "train", task=None, limit: int | None = None):
    """Open `src` as a `datasets.Dataset`, keeping every column (the teacher metadata included).

    `src` is the output folder of `narvl-pipe distill` (its one split is taken whatever `split` says; an output of
    an earlier version, a `save_to_disk` folder, too), a `save_to_disk` folder (a `DatasetDict` gives `split`), a
    `load_dataset`-able folder (parquet/arrow, e.g. a dataset pushed with `narvl-pipe push`) or a Hub id. A source
    without teacher targets is opened through `distill.sources.open_source` (TSV, COCO-Karpathy JSON,
    imagefolder...) into the canonical schema, which needs `task`.
    """
    src = os.fspath(src)
    path = Path(src)
    ds = distill_output(path, src, split) if path.is_dir() else None
    if ds is None and path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        ds = load_saved(path, split, src)
    elif ds is None and ((path.is_dir() and folder_kind(path) is None) or not path.exists()):
        # (a benchmark's own files go to open_source)
        try:
            dd = datasets.load_dataset(src)
        except Exception:  # noqa: BLE001 (not a plain datasets folder/id: let open_source detect the format)
            dd = None
        if dd is not None:
            try:
                ds = pick_split(dd, split, src)
            except UserError:  # no such split as a plain dataset (a Karpathy folder's images): open_source decides
                ds = None
    if ds is None or not is_distilled(ds):
        if task is None:
            raise UserError(f"{src} holds no teacher targets; opening it as a canonical source needs the task")
        ds = open_source(src, split, None, task)
    if task is not None and "task" in ds.column_names and len(ds) and ds[0]["task"] != task.name:
        raise UserError(f"{src} was distilled for task {ds[0]['task']!r}, not {task.name!r}")
    if limit is not None:
        ds = ds.select(range(min(int(limit), len(ds))))
    if len(ds) == 0:
        raise UserError(f"{src} ({split}) has no rows")
    return ds


@dataclass
class FilterReport:
    """How many rows the train-time filters removed."""

    total: int
    """Rows before filtering."""
    removed_logprob: int = 0
    """Rows whose teacher log-prob was below `min_teacher_logprob`."""
    removed_length: int = 0
    """Rows whose teacher target (EOS included) was longer than `max_target_len`."""

    @property
    def kept(self) -> int:
        return self.total - self.removed_logprob - self.removed_length


def filter_rows(ds, min_teacher_logprob: float | None = None, max_target_len: int | None = None):
    """Drop distilled rows by teacher metadata (a train-time choice, as in distil-whisper). Returns (ds, report)."""
    report = FilterReport(total=len(ds))
    if min_teacher_logprob is not None:
        if "teacher_logprob" not in ds.column_names:
            raise UserError("`min_teacher_logprob` needs a distilled dataset (column teacher_logprob)")
        before = len(ds)
        ds = ds.filter(lambda lp: [v is not None and v >= min_teacher_logprob for v in lp],
                       input_columns=["teacher_logprob"], batched=True, desc="filter teacher log-prob")
        report.removed_logprob = before - len(ds)
    if max_target_len is not None:
        col = "target_len" if "target_len" in ds.column_names else "target_ids" if "target_ids" in ds.column_names else None
        if col is None:
            raise UserError("`max_target_len` needs a distilled dataset (column target_len or target_ids)")
        before = len(ds)
        ds = ds.filter(lambda v: [(x if col == "target_len" else len(x)) <= max_target_len for x in v],
                       input_columns=[col], batched=True, desc="filter target length")
        report.removed_length = before - len(ds)
    if len(ds) == 0:
        raise UserError(f"the train-time filters removed all {report.total} rows")
    return ds, report


class SkipLog:
    """Rows left out as unusable, as `{"id", "index", "reason"}` records (the format of distill's quarantine.jsonl).

    With a `path`, each new record is appended at once in one `O_APPEND` write, so every DataLoader worker and
    process of a run can share the file and a killed run keeps what it found; `records()` reads them back
    deduplicated by row index (a row met again in a later epoch or by another worker is one record).
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else None
        self._seen: dict[int, dict] = {}

    def add(self, index: int, row_id: Any, reason: str) -> None:
        if index in self._seen:
            return
        rec = {"id": str(row_id), "index": int(index), "reason": reason}
        self._seen[int(index)] = rec
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (json.dumps(rec) + "\n").encode("utf-8"))
            finally:
                os.close(fd)

    def records(self) -> list[dict]:
        """Every record (this process's and the file's), one per row index, in index order."""
        recs = dict(self._seen)
        if self.path is not None and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:  # the torn last line of a killed run
                    continue
                recs.setdefault(int(rec["index"]), rec)
        return [recs[k] for k in sorted(recs)]

    def finalize(self) -> list[dict]:
        """Rewrite the file deduplicated and sorted (atomically; no file when nothing was skipped)."""
        recs = self.records()
        if self.path is not None and recs:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in recs))
        return recs

    @classmethod
    def for_training(cls, output_dir: str | os.PathLike, resume: bool) -> "SkipLog":
        """`OUTPUT_DIR/skipped.jsonl` of a training run: kept (deduplicated) on resume, emptied for a fresh run
        (unless checkpoints of an earlier run are there: the trainer refuses that run, and its record stays); every
        process waits until the main one has done that."""
        log = cls(Path(output_dir) / SKIPPED_FILE)
        state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
        if state.is_main_process:
            if resume:
                log.finalize()
            elif latest_checkpoint(output_dir) is None:
                log.path.unlink(missing_ok=True)
        state.wait_for_everyone()
        return log

    def report(self) -> int:
        """Finalize, print one line when rows were skipped, and return how many (call on the main process)."""
        n = len(self.finalize())
        if n:
            print(f"note: {n} unusable training rows skipped (unreadable image or no reference), "
                  f"reasons in {self.path}")
        return n


# What makes one row unusable (image unreadable: `ImageLoadError` is a UserError; no/empty reference: the tasks
# raise UserError; a missing box or label arrives as None: TypeError/ValueError).
_ROW_ERRORS = (UserError, TypeError, ValueError)


def reference_problem(task, row: dict, tokenizer: Any = None) -> str | None:
    """Why `row` has no usable reference for `task` (no caption, no answer, no box, an unknown label), or None:
    what evaluation and raw-reference training skip."""
    try:
        task.reference(row, tokenizer=tokenizer)
    except _ROW_ERRORS as exc:
        return str(exc)
    return None


def _row_seed(seed: int, draw: int) -> int:
    return (seed * 1_000_003 + draw) & 0x7FFFFFFF


class TaskRows:
    """A map-style training set: `example(row, draw)` -> dict of `input_ids`, `pixels`, `target`, `weight`.

    `draw` (see `student.trainer.StepBatchSampler`) seeds the random reference choice, so the chosen caption of a
    given sample is the same on any number of processes and after a resume.

    An unusable row (its image cannot be read, it has no reference) is recorded in `skips` and replaced by the next
    usable row (index order, wrapping): a pure function of the data, so batches keep their size and a resumed or
    multi-process run sees the same samples. Only when no row is usable does `example` raise `UserError`.
    """

    def __init__(self, ds, task, processor, target_column: str = "target", seed: int = 0,
                 resolution: int | None = None, skips: SkipLog | None = None, reencode: bool = False,
                 trie: Any = None):
        if target_column not in TARGET_COLUMNS:
            raise UserError(f"`target_column` must be one of {', '.join(TARGET_COLUMNS)}, got {target_column!r}")
        if target_column == "target" and not is_distilled(ds):
            raise UserError("`target_column` target needs a distilled dataset (columns target_ids/target); "
                            "use --target-column references to train on the raw labels")
        if target_column == "references":
            missing = [c for c in task.input_columns if c not in ds.column_names and c != "premise"]
            if missing:
                raise UserError(f"`target_column` references: the data lacks {missing} for task {task.name}")
        if isinstance(ds.features.get("image"), Image) and ds.features["image"].decode:
            ds = ds.cast_column("image", Image(decode=False))  # decoded by `load_image`, as on every other path
        self.ds, self.task, self.processor, self.tokenizer = ds, task, processor, processor.tokenizer
        self.target_column, self.seed = target_column, seed
        self.reencode = reencode
        """The teacher's `target_ids` are in another vocabulary (`needs_reencoding`): targets come from the
        canonical prediction, encoded with the student's tokenizer by the task."""
        self.trie = trie
        """A `distill.ofa.constraints.TokenTrie` of the answers an AR teacher's loss is constrained to (OFA's
        constrained fine-tuning, `Task.constraint_answers`): each example then lists the allowed next tokens."""
        self.resolution = resolution or getattr(processor.image_processor, "size", None)
        self.skips = skips if skips is not None else SkipLog()
        self._bad: set[int] = set()  # rows found unusable by this process (badness depends on the row only)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, row: int) -> dict[str, Any]:
        return self.example(row, row)

    def target_ids(self, row: dict, draw: int) -> tuple[list[int], float]:
        """(target ids ending with EOS, per-sample loss weight)."""
        if self.target_column == "target":
            if self.reencode or self.task.kd_targets_from_text:
                return self.task.student_target(row, self.tokenizer), 1.0
            ids = row.get("target_ids")
            if ids is None:
                ids = self.task.encode_target(row["target"], self.tokenizer)
            return list(ids), 1.0
        rng = random.Random(_row_seed(self.seed, draw))
        text = self.task.reference(row, rng=rng, tokenizer=self.tokenizer)
        # VQA: the chosen answer's confidence (OFA's for TSV rows, else its VQA score), as OFA/NARVL weight the loss
        weight = self.task.target_weight(row, text)
        return self.task.encode_target(text, self.tokenizer), weight

    def example(self, row: int, draw: int) -> dict[str, Any]:
        n, first = len(self.ds), None
        for k in range(n):
            index = (int(row) + k) % n
            if index in self._bad:
                continue
            r = self.ds[index]
            try:
                return self._encode(r, draw)
            except _ROW_ERRORS as exc:
                self._bad.add(index)
                self.skips.add(index, r.get("id", index), str(exc))
                first = first or str(exc)
        where = f" (reasons in {self.skips.path})" if self.skips.path else ""
        raise UserError(f"no usable training row: all {n} rows were skipped{where}; first: {first}")

    def encode_row(self, r: dict, draw: int) -> dict[str, Any] | None:
        """The example of a row given as a dict (a streamed row), or None when it is unusable (then recorded in
        `skips` under the draw's number: a stream has no row index)."""
        try:
            return self._encode(r, draw)
        except _ROW_ERRORS as exc:
            self.skips.add(draw, r.get("id", draw), str(exc))
            return None

    def _encode(self, r: dict, draw: int) -> dict[str, Any]:
        ids, weight = self.target_ids(r, draw)
        enc = self.processor(text=[self.task.prompt(r)], images=[r["image"]], size=self.resolution)
        input_ids = enc["input_ids"][0].tolist()
        item = {"input_ids": input_ids, "pixels": enc["patch_images"][0].numpy(), "target": ids, "weight": weight}
        if self.task.prompt_type == "prev_output":
            # An AR teacher is trained as it is decoded: after `<s>` + the prompt (the encoder input minus EOS).
            item["decoder_prompt"] = input_ids[:-1]
        if self.trie is not None:  # per target position, the tokens the trie allows there ([]: off the trie)
            item["allowed"] = [self.trie.next_tokens(ids[:i]) for i in range(len(ids))]
        return item


def _pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    out = torch.full((len(seqs), max(len(s) for s in seqs)), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def collate(items: list[dict[str, Any]], pad_id: int = 1, bos_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad a list of `TaskRows` examples into a batch.

    Returns:
        `input_ids` (B, S) padded with `pad_id`; `patch_images` (B, 3, H, W); `patch_masks` (B,) all True;
        `targets` (B, L) padded with `pad_id`; `target_lengths` (B,); `weights` (B,); and for teacher forcing
        `decoder_input_ids` (B, P + L - 1) = decoder prompt + target[:-1] and `labels` (B, P + L - 1) = target
        after the prompt, -100 on the prompt and on padding (P: the item's `decoder_prompt`, default `<s>`).
        When an item lists `allowed` tokens (a constrained AR teacher): `constrained` (B, P + L - 1) marks the
        label positions restricted to a trie and `constraint_index` (N, 3) lists their allowed (b, t, token).
    """
    targets = [it["target"] for it in items]
    prompts = [list(it.get("decoder_prompt", [bos_id])) for it in items]
    batch = {
        "input_ids": _pad([list(it["input_ids"]) for it in items], pad_id),
        "patch_images": torch.from_numpy(np.stack([it["pixels"] for it in items])),
        "patch_masks": torch.ones(len(items), dtype=torch.bool),
        "targets": _pad(targets, pad_id),
        "target_lengths": torch.tensor([len(t) for t in targets], dtype=torch.long),
        "weights": torch.tensor([float(it["weight"]) for it in items], dtype=torch.float32),
        "decoder_input_ids": _pad([p + list(t[:-1]) for p, t in zip(prompts, targets)], pad_id),
        "labels": _pad([[-100] * (len(p) - 1) + list(t) for p, t in zip(prompts, targets)], -100),
    }
    if any("allowed" in it for it in items):
        constrained = torch.zeros(batch["labels"].shape, dtype=torch.bool)
        index = []
        for b, (p, it) in enumerate(zip(prompts, items)):
            for i, tokens in enumerate(it.get("allowed", ())):
                if tokens:  # a target off the trie stays unconstrained there rather than impossible
                    constrained[b, len(p) - 1 + i] = True
                    index += [(b, len(p) - 1 + i, k) for k in tokens]
        batch["constrained"] = constrained
        batch["constraint_index"] = torch.tensor(index, dtype=torch.long).reshape(-1, 3)
    return batch
