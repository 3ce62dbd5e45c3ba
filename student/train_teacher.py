"""`train-teacher`: fine-tune (or train from scratch) the autoregressive OFA teacher with label-smoothed
cross-entropy, OFA's recipe, on the shared Accelerate trainer (`student.trainer`).

This is how one makes a teacher for a new task, and how the offline demo gets its teacher on the shapes world:
`--arch` builds an OFA of one of the published sizes (DESIGN.md section 3) from scratch, with optional overrides for
a tiny custom size (`--d-model 64 --layers 2 ...`, or a whole `--config-json`); the tokenizer then comes from
`--tokenizer` or the data folder's `tokenizer/`, else is trained on the training text (`student.teacher_tokenizer`).
"""
from __future__ import annotations

import bisect
import dataclasses
import json
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed

from distill.errors import UserError
from distill.hub_ids import resolve_model_folder
from distill.jsonio import jsonable
from distill.loading import load_pretrained
from distill.ofa import OFAConfig, OFAModel, OFAProcessor
from distill.ofa.image_processing_ofa import OFAImageProcessor
from distill.ofa.processing_ofa import load_ofa_processor
from distill.ofa.tokenization_ofa import load_ofa_tokenizer
from distill.tasks import get_task
from distill.ofa.constraints import TokenTrie
from distill.tasks.base import text_target_ids
from distill.teachers.ofa import OFATeacher
from student.data import SkipLog, TaskRows, collate, load_training_data
from student.evaluate import make_eval_fn
from student.presets import OFA_ARCHS as ARCHS, drop_path_fields, ofa_size, resolve
from student.run_folder import write_run_folder
from student.train_config import TrainConfig, TrainResult
from student.train_eval import eval_rows
from student.train_fields import DropWorstFields, EvalFields, TrainDataFields
from student.teacher_tokenizer import tokenizer_from_rows
from student.train_setup import freeze_token_embeddings
from student.trainer import train

__all__ = ["ARCHS", "TaskMixture", "TeacherTrainConfig", "arch_help", "build_ofa_config", "default_resolution",
           "teacher_loss", "train_teacher"]

def arch_help() -> str:
    """One line per size for `--help`: what `--arch NAME` builds and the image side it defaults to."""
    return "; ".join(
        f"{name} ({a['params']} params, {a['encoder_layers']}+{a['decoder_layers']} layers, d_model {a['d_model']}, "
        f"{a['resnet_type']} stem, {a.get('resolution') or 'task'} px)" for name, a in ARCHS.items())


def default_resolution(cfg: "TeacherTrainConfig", task) -> int:
    """Image side of a model built from scratch: `resolution`, else the arch's model-card side, else the task's."""
    return cfg.resolution or ARCHS.get(cfg.arch or "tiny", {}).get("resolution") or task.resolution


@dataclass(kw_only=True)
class TeacherTrainConfig(TrainDataFields, EvalFields, DropWorstFields, TrainConfig):
    """`narvl-pipe train-teacher` settings; the optimisation fields are those of `TrainConfig`, and its recipe
    fields (with OFA's drop-worst) left unset take OFA's script for the task and size (`student.presets.TEACHER_RECIPES`; a model
    built from scratch with `arch` never freezes its embeddings unless asked)."""

    task: str
    """caption, vqa, grounding or entailment: the task trained (single-task) and evaluated during training."""
    tasks: list[str] | None = None
    """Train ONE teacher on a mixture of these tasks, as OFA is one model for all of them: every training row
    appears once per task (its prompt and target for that task) in one shuffled stream. `task` must be one of them
    and is the one evaluated (default: `task` alone)."""
    data: str
    """Training source (any `distill.sources` SRC; a distilled dataset's references are used too)."""
    init: str | None = None
    """OFA checkpoint (folder or Hub id) to fine-tune (with its tokenizer and image processor); exclusive with
    `arch`."""
    arch: str | None = None
    """Build a fresh OFA of this size: tiny, medium, base, large or huge (default tiny when no `init`)."""
    d_model: int | None = None
    """Override the arch's width (FFN becomes 4 x d_model unless `ffn_dim`)."""
    layers: int | None = None
    """Override the arch's encoder and decoder depth."""
    heads: int | None = None
    """Override the arch's attention heads."""
    ffn_dim: int | None = None
    """Override the FFN width."""
    resnet_type: str | None = None
    """Override the image stem: resnet18, resnet50, resnet101 or resnet152."""
    config_json: str | None = None
    """A JSON file of `OFAConfig` fields, applied last (any field)."""
    tokenizer: str | None = None
    """Tokenizer folder for `arch` (default: DATA/tokenizer, else a BPE trained on the training text)."""
    resolution: int | None = None
    """Image side (default: the image processor of `init`; with `arch` the size's model-card side, tiny 256 and
    base 384, else the task's OFA resolution)."""
    label_smoothing: float | None = None
    """Label smoothing of the cross-entropy (default: the task's, 0.1; entailment 0; a mixture: 0.1 unless all
    its tasks agree, OFA's pre-training value)."""
    answers: str | None = None
    """VQA: OFA's trainval answer list (`trainval_ans2label.pkl`, or one answer per line / a JSON list): the trie
    the loss and the in-training evaluation are constrained to, as OFA's `--ans2label-file` (default: the training
    rows' answers)."""


class TaskMixture:
    """Several `student.data.TaskRows` as one map-style training set: index i is row i of the first part, then the
    second part's rows, and so on. The trainer's seeded sampler shuffles across parts, so batches mix the tasks."""

    def __init__(self, parts: list):
        self.parts = parts
        self.offsets = [0]
        for part in parts:
            self.offsets.append(self.offsets[-1] + len(part))

    def __len__(self) -> int:
        return self.offsets[-1]

    def example(self, row: int, draw: int) -> dict[str, Any]:
        k = bisect.bisect_right(self.offsets, int(row)) - 1
        return self.parts[k].example(int(row) - self.offsets[k], draw)


def _task_names(cfg: TeacherTrainConfig) -> list[str]:
    """The trained tasks, validated: `[task]`, or `tasks` (distinct, containing `task`)."""
    if cfg.tasks is None:
        return [cfg.task]
    names = [get_task(t).name for t in cfg.tasks]
    if not names or len(set(names)) != len(names):
        raise UserError(f"tasks must be a non-empty list of distinct tasks, got {cfg.tasks}")
    if get_task(cfg.task).name not in names:
        raise UserError(f"task {cfg.task!r} (the evaluated one) must be one of tasks {names}")
    return names


def build_ofa_config(cfg: TeacherTrainConfig, vocab_size: int, resolution: int):
    """An `OFAConfig` for `cfg.arch` with the overrides; the image grid is sized to the resolution."""
    arch = cfg.arch or "tiny"
    if arch not in ARCHS:
        raise UserError(f"`arch` must be one of {', '.join(ARCHS)}, got {arch!r}")
    a = dict(ARCHS[arch])
    layers = cfg.layers
    d_model = cfg.d_model or a["d_model"]
    heads = cfg.heads or a["heads"]
    if d_model % heads:
        raise UserError(f"`d_model` {d_model} must be divisible by `heads` {heads}")
    fields = dict(
        vocab_size=vocab_size, d_model=d_model, encoder_attention_heads=heads, decoder_attention_heads=heads,
        encoder_layers=layers or a["encoder_layers"], decoder_layers=layers or a["decoder_layers"],
        encoder_ffn_dim=cfg.ffn_dim or 4 * d_model, decoder_ffn_dim=cfg.ffn_dim or 4 * d_model,
        resnet_type=cfg.resnet_type or a["resnet_type"],
        image_bucket_size=max(42, -(-resolution // 16)),  # the patch grid must fit the position tables
    )
    fields.update(drop_path_fields(cfg.drop_path))
    if cfg.config_json:
        p = Path(cfg.config_json)
        if not p.is_file():
            raise UserError(f"`config_json` {p}: file not found")
        fields.update(json.loads(p.read_text()))
    try:
        return OFAConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise UserError(f"invalid OFA configuration: {exc}") from exc


def teacher_loss(label_smoothing: float, drop_worst_ratio: float = 0.0, drop_worst_after: int = 0):
    """OFA's criterion (`criterions/label_smoothed_cross_entropy.py`), averaged over target tokens.

    Per target token, with `eps` the label smoothing and `A` the tokens allowed there (the whole vocabulary, or
    the trie's next tokens where the batch is `constrained`: the logits outside `A` are set to -inf before the
    log-softmax): `(1 - eps - eps_i) * nll + eps_i * sum_{v in A} -log p(v)`, `eps_i = eps / (|A| - 1)`, times the
    sample's `weights` (OFA multiplies the log-probs by VQA's answer confidence). Drop-worst: once more than
    `drop_worst_after` updates are done (optimizer step `step` > `drop_worst_after` + 1), only the
    `int(n * (1 - drop_worst_ratio))` lowest of the micro-batch's `n` token losses count (OFA's `torch.topk(loss,
    k, largest=False)`, the loss then averaged over the tokens kept).

    Batch: `decoder_input_ids`, `labels` (B, L) with -100 off the target; optional `constrained` (B, L) and
    `constraint_index` (N, 3) from `student.data.collate`. Returns the loss and `n_tokens`.
    """

    def loss_fn(model, batch, step: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = model(input_ids=batch["input_ids"], patch_images=batch["patch_images"],
                    patch_masks=batch["patch_masks"], decoder_input_ids=batch["decoder_input_ids"])
        logits, labels = out.logits.float(), batch["labels"]
        allowed = None
        if "constrained" in batch:
            allowed = ~batch["constrained"].to(logits.device)[..., None].expand_as(logits).clone()
            b, t, v = batch["constraint_index"].to(logits.device).unbind(-1)
            allowed[b, t, v] = True
            logits = logits.masked_fill(~allowed, float("-inf"))
        lprobs = logits.log_softmax(-1)
        keep = labels != -100
        nll = -lprobs.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
        if allowed is None:
            smooth, n_allowed = -lprobs.sum(-1), lprobs.shape[-1]
        else:
            smooth, n_allowed = -lprobs.masked_fill(~allowed, 0.0).sum(-1), allowed.sum(-1)
        eps_i = label_smoothing / (n_allowed - 1 + 1e-6)  # OFA's 1e-6: one allowed token gives nll = 0 there
        per_token = (1.0 - label_smoothing - eps_i) * nll + eps_i * smooth
        weights = batch.get("weights")
        if weights is not None:
            per_token = per_token * weights.to(per_token)[:, None]
        tokens = per_token[keep]
        if drop_worst_ratio > 0 and step - 1 > drop_worst_after:  # fairseq's update_num: the updates done
            tokens = tokens.topk(int(tokens.numel() * (1 - drop_worst_ratio)), largest=False).values
        loss = tokens.sum() / max(tokens.numel(), 1)
        return loss, {"n_tokens": keep.sum()}

    return loss_fn


def constraint_answers(task, ds) -> list[str] | None:
    """`task.constraint_answers` over the training rows, read from their reference columns only (no images)."""
    columns = [c for c in task.reference_columns if c in ds.column_names]
    return task.constraint_answers(list(ds.select_columns(columns)) if columns else [])


def training_answers(cfg: TeacherTrainConfig, datasets_by_task: dict[str, Any]) -> dict[str, list[str] | None]:
    """Per trained task, the answers its loss and evaluation are constrained to: the `answers` file for the tasks
    that decode over an answer list (VQA: OFA's trainval list, as OFA's `--ans2label-file`), else the training
    rows' (`constraint_answers`). A file given where no trained task takes one is refused."""
    tasks = {name: get_task(name) for name in datasets_by_task}
    if cfg.answers and not any(t.answer_space == "answer_list" for t in tasks.values()):
        get_task(cfg.task).answer_list(cfg.answers)  # raises: the task decodes over no answer list
    return {name: task.answer_list(cfg.answers) if cfg.answers and task.answer_space == "answer_list"
            else constraint_answers(task, datasets_by_task[name]) for name, task in tasks.items()}


def constraint_trie(answers: list[str] | None, tokenizer):
    """OFA's constrained fine-tuning: the trie of the answers' targets, or None for an unconstrained task."""
    return TokenTrie([text_target_ids(a, tokenizer) for a in answers]) if answers else None


def train_teacher(cfg: TeacherTrainConfig) -> TrainResult:
    """Train the AR OFA teacher and write `cfg.output_dir` as a save_pretrained folder (+ tokenizer, image
    processor, `train_config.json`)."""
    cfg.validate()
    if cfg.init and (cfg.arch or cfg.config_json):
        raise UserError("`init` and `arch`/`config_json` are exclusive: fine-tune a checkpoint or build a new model")
    task = get_task(cfg.task)
    names = _task_names(cfg)
    # the data first: a bad source fails before a load
    datasets_by_task = {name: load_training_data(cfg.data, cfg.split, get_task(name), cfg.limit) for name in names}
    ds = datasets_by_task[task.name]
    answers = training_answers(cfg, datasets_by_task)  # the answer file too, before any model loads
    provenance: dict[str, Any] = {}
    if cfg.init:
        init, provenance["init_identity"] = resolve_model_folder(cfg.init, cfg.init_revision, field="init")
        size = ofa_size(json.loads((init / "config.json").read_text()))
    else:
        init = None
        if cfg.freeze_embeddings is None:  # the scripts freeze pretrained embeddings; fresh ones must learn
            cfg = dataclasses.replace(cfg, freeze_embeddings=False)
        custom = any(v is not None for v in (cfg.d_model, cfg.layers, cfg.heads, cfg.ffn_dim, cfg.config_json))
        size = None if custom else ofa_size(ARCHS.get(cfg.arch or "tiny", {}))
    cfg, provenance["recipe"] = resolve(cfg, "teacher", size)
    set_seed(cfg.seed)
    if init is not None:
        model = load_pretrained(OFAModel, init, **drop_path_fields(cfg.drop_path))
        processor = load_ofa_processor(init, size=task.resolution, tokenizer=cfg.tokenizer)
        if cfg.resolution:
            processor.image_processor.size = cfg.resolution
    else:
        tok_src = cfg.tokenizer or os.path.join(cfg.data, "tokenizer")
        if Path(tok_src).is_dir():
            tok = load_ofa_tokenizer(tok_src)
        elif cfg.tokenizer:
            raise UserError(f"no tokenizer at {tok_src}: pass `tokenizer` DIR, or none to train one on the data")
        else:
            tok = tokenizer_from_rows(datasets_by_task, [get_task(n) for n in names])
            provenance["tokenizer"] = f"BPE trained on the training text ({len(tok)} tokens)"
            print(f"note: no tokenizer given: trained a byte-level BPE on the training text ({len(tok)} tokens), "
                  "saved with the teacher")
        processor = OFAProcessor(OFAImageProcessor(size=default_resolution(cfg, task)), tok)
        model = OFAModel(build_ofa_config(cfg, len(processor.tokenizer), processor.image_processor.size))
    tokenizer = processor.tokenizer
    if len(tokenizer) > model.config.vocab_size:
        raise UserError(f"tokenizer has {len(tokenizer)} tokens but the model only {model.config.vocab_size}")
    if cfg.freeze_embeddings:
        freeze_token_embeddings(model)

    skips = SkipLog.for_training(cfg.output_dir, cfg.resume)
    parts = [TaskRows(part_ds, get_task(name), processor, target_column="references", seed=cfg.seed, skips=skips,
                      trie=constraint_trie(answers[name], tokenizer))
             for name, part_ds in datasets_by_task.items()]
    train_rows = parts[0] if len(parts) == 1 else TaskMixture(parts)
    eval_fn = None
    rows = eval_rows(cfg, task)
    if rows:
        # an answer-list task decodes over the same list the loss is constrained to
        cands = answers[task.name] if task.answer_space == "answer_list" else None
        eval_fn = make_eval_fn(task, rows, partial(OFATeacher.from_module, processor=processor),
                               cfg.eval_batch_size, {"num_beams": cfg.eval_num_beams}, cands)
    eps = cfg.label_smoothing
    if eps is None:
        smoothing = {get_task(n).label_smoothing for n in names}
        eps = smoothing.pop() if len(smoothing) == 1 else 0.1
    pad, bos = tokenizer.pad_token_id, tokenizer.bos_token_id
    resolved = dataclasses.replace(cfg, label_smoothing=eps, resolution=processor.image_processor.size,
                                   drop_path=model.config.encoder_drop_path_rate)
    epoch = sum(get_task(name).epoch_samples(part_ds) for name, part_ds in datasets_by_task.items())
    loss = teacher_loss(eps, resolved.drop_worst_ratio or 0.0, resolved.drop_worst_after or 0)
    result = train(model, loss, train_rows, resolved, collate_fn=partial(collate, pad_id=pad, bos_id=bos),
                   eval_fn=eval_fn, run_config=jsonable(resolved), epoch_samples=epoch)
    if result.is_main_process:
        record = {**jsonable(resolved), **result.resolved, **provenance, "final_step": result.step,
                  "eval": result.eval_metrics, "num_train_rows": len(ds), "num_train_examples": len(train_rows),
                  "epoch": {"samples": epoch, "rule": "; ".join(sorted({get_task(n).epoch_rule for n in names}))},
                  "constraint_answers": {name: ("answers file" if cfg.answers and get_task(name).answer_space == "answer_list"
                                                else "training rows" if a else None) for name, a in answers.items()},
                  "skipped_rows": skips.report()}
        write_run_folder(result, processor, cfg.output_dir, record)
    return result

