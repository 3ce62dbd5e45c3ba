"""`narvl-pipe distill`: run the OFA teacher over a dataset into a resumable, sharded Arrow dataset.

A thin layer over `distill.run.run_distill`; see `distill/run.py` and `distill/shards.py` for the behaviour and
the output layout (`datasets.load_from_disk(OUT)` opens the result).
"""
from __future__ import annotations

from typing import Optional

import typer

from distill.sources import CANONICAL_COLUMNS  # light (no datasets import): keeps --help fast


def distill(
    task: str = typer.Option(..., "--task", help="caption, vqa, grounding or entailment."),
    teacher: str = typer.Option(..., "--teacher", help="Teacher folder (model + tokenizer + image processor) or Hub id."),
    data: str = typer.Option(..., "--data", help="save_to_disk folder, parquet/arrow, imagefolder, OFA TSV, dataset_coco.json or Hub id."),
    out: str = typer.Option(..., "--out", help="Output folder (datasets.load_from_disk opens it when complete)."),
    split: str = typer.Option("train", "--split", help="Split of the source."),
    batch_size: int = typer.Option(32, "--batch-size", help="Rows per generate() call, per process."),
    num_beams: Optional[int] = typer.Option(None, "--num-beams", help="Beam size (task default: OFA's evaluation setting)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Longest target (task default)."),
    no_repeat_ngram_size: Optional[int] = typer.Option(None, "--no-repeat-ngram-size", help="Task default (caption: 3)."),
    num_return_sequences: int = typer.Option(1, "--num-return-sequences", help="Keep the n best as the `nbest` column."),
    answers: Optional[str] = typer.Option(None, "--answers", help="VQA candidate answers (required for vqa): OFA's trainval_ans2label.pkl, a JSON list, or one per line."),
    vqa_mode: str = typer.Option("beam", "--vqa-mode", help="VQA: beam (OFA's beam search over the answer trie) or allcand (score every candidate)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N rows."),
    shard_size: int = typer.Option(1000, "--shard-size", help="Source rows per shard (the unit of resume)."),
    images: bool = typer.Option(True, "--images/--no-images", help="Store images in the rows, or only a reference."),
    column: Optional[list[str]] = typer.Option(
        None, "--column", metavar="CANONICAL=SOURCE",
        help=f"Read a canonical column from another source column, e.g. captions=text (repeatable). Canonical "
        f"columns: {', '.join(CANONICAL_COLUMNS)}."),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="Image size (default: the teacher's processor)."),
    image_root: Optional[str] = typer.Option(None, "--image-root", help="Root of relative image paths (COCO-Karpathy)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision of the teacher."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an output made with another configuration."),
    num_workers: int = typer.Option(2, "--num-workers", help="DataLoader workers decoding images and tokenising."),
    flush_every: int = typer.Option(256, "--flush-every", help="Flush the shard in progress every ~N rows."),
    dtype: str = typer.Option("float32", "--dtype",
                              help="Teacher weights' dtype: float32, bfloat16 or float16 (half: may change tokens)."),
    attn_implementation: str = typer.Option("eager", "--attn-implementation",
                                            help="Teacher attention: eager or sdpa (fused kernels on GPU)."),
    cache_implementation: str = typer.Option("dynamic", "--cache-implementation",
                                             help="KV cache: dynamic or static (torch.compile'd on CUDA)."),
) -> None:
    """Distil the teacher's outputs over SRC into OUT (resumable: rerun the same command after a crash)."""
    from distill.run import DistillConfig, run_distill
    from distill.sources import parse_columns

    config = DistillConfig(
        task=task, teacher=teacher, data=data, out=out, split=split, batch_size=batch_size, num_beams=num_beams,
        max_new_tokens=max_new_tokens, no_repeat_ngram_size=no_repeat_ngram_size,
        num_return_sequences=num_return_sequences, answers=answers, vqa_mode=vqa_mode, limit=limit, shard_size=shard_size, images=images,
        columns=parse_columns(column), resolution=resolution, overwrite=overwrite, num_workers=num_workers,
        image_root=image_root, revision=revision, flush_every=flush_every, dtype=dtype,
        attn_implementation=attn_implementation, cache_implementation=cache_implementation,
    )
    summary = run_distill(config)
    if summary is not None:
        from accelerate import PartialState

        if PartialState().is_main_process:
            typer.echo(summary.line())
