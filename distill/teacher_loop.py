"""The per-rank generation loop of `distill.run`: DataLoader workers (image decoding, prompts, tokenisation, bad-row
checks), the frozen teacher's `generate()` under `torch.inference_mode()`, and the shard writers.

Each batch is a slice of one shard, so a shard's batches (and therefore its rows, padding included) are the same
whatever the number of processes or the point a crashed run resumed from (flushes happen on batch boundaries).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from distill import shards as sh
from distill.sources import REFERENCE_COLUMNS, prompt_columns
from distill.workers import DieWithParent


# ---------------------------------------------------------------------------------------------------- workers
class _Rows:
    """The source as a map-style dataset of `(index, row)`, fetched a batch at a time (`__getitems__`)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitems__(self, indices: list[int]) -> list[tuple[int, dict]]:
        return list(zip(indices, self.ds.__getitems__(indices)))

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]


class _Collate:
    """Runs in the DataLoader workers: decode + preprocess images, build and tokenise prompts, flag bad rows."""

    def __init__(self, task, tokenizer, processor, resolution: int, images: bool):
        self.task, self.tokenizer, self.processor = task, tokenizer, processor
        self.resolution, self.images = resolution, images

    def _bad_reason(self, row: dict) -> str | None:
        for col in prompt_columns(self.task):
            if col != "premise" and not str(row.get(col) or "").strip():
                return f"empty {col}"
        return None

    def __call__(self, items: list[tuple[int, dict]]) -> dict:
        import numpy as np
        import torch

        from distill.images import ImageLoadError, load_image

        good, bad, pixels = [], [], []
        for index, row in items:
            reason = self._bad_reason(row)
            image = row["image"] or {}
            if reason is None:
                try:
                    pil = load_image(image, name=f"row {row['id']} ({image.get('path') or 'embedded'})")
                    pixels.append(self.processor.process_image(pil, size=self.resolution))
                except ImageLoadError as exc:
                    reason = str(exc)
            if reason is not None:
                bad.append((index, row["id"], reason))
                continue
            if self.images and image.get("bytes") is None:  # store the file's bytes: the output is self-contained
                with open(image["path"], "rb") as fh:
                    image = {"bytes": fh.read(), "path": image.get("path")}
            row = dict(row, image=image, prompt=self.task.prompt(row))
            good.append((index, row))
        batch: dict[str, Any] = {"indices": [i for i, _ in items], "good": good, "bad": bad}
        if good:
            enc = self.tokenizer([r["prompt"] for _, r in good], return_tensors="pt", padding=True)
            batch["input_ids"] = enc["input_ids"]
            batch["patch_images"] = torch.from_numpy(np.stack(pixels))
        return batch


def _batches(plan, mine: list[int], starts: dict[int, int], batch_size: int) -> list[list[int]]:
    """Index lists of this rank's pending work; a batch never crosses a shard (batch i of a shard is fixed)."""
    out = []
    for s in mine:
        lo, hi = plan[s]
        for b in range(lo + starts[s], hi, batch_size):
            out.append(list(range(b, min(b + batch_size, hi))))
    return out


# ---------------------------------------------------------------------------------------------------- generation
def _row_out(task, row: dict, index: int, target_ids: list[int], text: str, logprob: float, features) -> dict:
    out = {"id": row["id"], "task": task.name, "prompt": row["prompt"]}
    for col in prompt_columns(task):
        out[col] = row.get(col) or ""
    out.update({"target": text, "target_ids": target_ids, "teacher_logprob": logprob, "target_len": len(target_ids)})
    for col in REFERENCE_COLUMNS:
        if col in features:
            out[col] = row.get(col)
    image = row.get("image") or {}
    out["source_index"], out["image_path"] = index, image.get("path")
    if "image" in features:
        out["image"] = {"bytes": image.get("bytes"), "path": image.get("path")}
    return out


def _split_targets(sequences, scores, eos: int, pad: int, tokenizer, task) -> list[tuple[list[int], str, float]]:
    """Per generated sequence: (ids after the start token, cut after the first EOS, EOS appended if missing; text;
    summed log-prob of those ids)."""
    result = []
    for seq, sc in zip(sequences.tolist(), scores.tolist()):
        ids, total = [], 0.0
        for t, tok in enumerate(seq[1:]):
            if tok == pad:
                break
            ids.append(tok)
            total += sc[t]
            if tok == eos:
                break
        if not ids or ids[-1] != eos:
            ids.append(eos)
        result.append((ids, _text(ids, tokenizer, task), total))
    return result


def _text(ids: list[int], tokenizer, task) -> str:
    if task.name == "grounding":  # bins as OFA writes them, "<bin_a><bin_b>...", no spaces
        return "".join(tokenizer.convert_ids_to_tokens([t for t in ids if t != tokenizer.eos_token_id]))
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def load_teacher(folder: Path, config, device):
    """The frozen teacher (never DDP-wrapped), its weights in `config.dtype`, attention `config.attn_implementation`."""
    import torch

    from distill.loading import load_pretrained
    from distill.ofa import OFAModel

    model = load_pretrained(OFAModel, folder, dtype=getattr(torch, config.dtype),
                            attn_implementation=config.attn_implementation)
    return model.to(device).eval()


def generate_shards(config, task, ds, plan, mine, features, folder, tokenizer, gen, resolution, state) -> int:
    """Generate this rank's shards (resuming partial ones); returns the number of rows written this run."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from distill.ofa.image_processing_ofa import OFAImageProcessor

    if not mine:
        return 0  # nothing pending for this rank: no model load
    out, schema = Path(config.out), features.arrow_schema
    writers = {s: sh.ShardWriter(out, s, schema) for s in mine}
    starts = {s: w.probe() for s, w in writers.items()}
    processor = (OFAImageProcessor.from_pretrained(str(folder)) if (folder / "preprocessor_config.json").is_file()
                 else OFAImageProcessor(size=resolution))
    model = load_teacher(folder, config, state.device)
    mp = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mp) if state.device.type != "cpu" else None
    if model.dtype != torch.float32:
        amp_dtype = None  # the weights already are in the chosen half type
    gen_kwargs = dict(gen, output_scores=True, return_dict_in_generate=True)
    if config.cache_implementation != "dynamic":
        gen_kwargs["cache_implementation"] = config.cache_implementation
    nret = gen["num_return_sequences"]
    eos, pad = model.config.eos_token_id, model.config.pad_token_id

    flush_rows = max(config.batch_size, -(-config.flush_every // config.batch_size) * config.batch_size)
    batches = _batches(plan, mine, starts, config.batch_size)
    for s in mine:  # shards whose rows were all done before a crash at completion: just complete them
        if plan[s][0] + starts[s] >= plan[s][1]:
            writers[s].resume()
            writers[s].complete(plan[s][1] - plan[s][0])
    loader = DataLoader(
        _Rows(ds), batch_sampler=batches, collate_fn=_Collate(task, tokenizer, processor, resolution, config.images),
        num_workers=config.num_workers, persistent_workers=False, prefetch_factor=4 if config.num_workers else None,
        worker_init_fn=DieWithParent(),  # a killed run leaves no orphan workers behind
    )
    total = sum(len(b) for b in batches)
    bar = tqdm(total=total, unit="row", desc=f"distill {task.name}", dynamic_ncols=True, smoothing=0.1,
               disable=not (config.progress and state.is_main_process))
    written, current, since_flush = 0, None, 0
    try:
        for batch in loader:
            s = batch["indices"][0] // config.shard_size
            lo, hi = plan[s]
            if current != s:
                current = s
                writers[s].resume()
                since_flush = 0
            w = writers[s]
            for index, row_id, reason in batch["bad"]:
                w.quarantine(row_id, index, reason)
            if batch["good"]:
                kwargs = dict(input_ids=batch["input_ids"].to(state.device),
                              patch_images=batch["patch_images"].to(state.device, model.dtype))
                kwargs["patch_masks"] = torch.ones(len(batch["good"]), dtype=torch.bool, device=state.device)
                amp = torch.autocast(state.device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
                with torch.inference_mode(), amp:
                    # VQA / entailment: OFA's own inference (distill.tasks.ofa_decoding); others: generate()
                    nbests = task.ofa_inference(model, tokenizer, kwargs, gen, nret)
                    if nbests is None:
                        res = model.generate(**kwargs, **gen_kwargs)
                        steps = model.compute_transition_scores(
                            res.sequences, res.scores, getattr(res, "beam_indices", None),
                            normalize_logits=gen.get("num_beams", 1) == 1)
                        flat = _split_targets(res.sequences, steps.float(), eos, pad, tokenizer, task)
                        nbests = [flat[k * nret: (k + 1) * nret] for k in range(len(batch["good"]))]
                rows = []
                for (index, row), best in zip(batch["good"], nbests):
                    ids, text, lp = best[0]
                    r = _row_out(task, row, index, ids, text, lp, features)
                    if nret > 1:
                        r["nbest"] = [{"text": t, "logprob": p} for _, t, p in best]
                    rows.append(r)
                w.add(rows)
                written += len(rows)
            since_flush += len(batch["indices"])
            done = batch["indices"][-1] + 1 - lo
            if batch["indices"][-1] + 1 >= hi:
                w.complete(done)
                current = None
            elif since_flush >= flush_rows:
                w.flush(done)
                since_flush = 0
            bar.update(len(batch["indices"]))
    finally:
        bar.close()
        for w in writers.values():
            w.close()
    return written

