"""`DistillConfig`: everything `narvl-pipe distill` takes (the CLI options are generated from it), and the source
options it shares with `evaluate`."""
from __future__ import annotations

from dataclasses import dataclass, field

from distill.seam import DecodingOptions, ModelOptions


@dataclass(kw_only=True)
class SourceOptions:
    """How a source's columns and relative image paths are read (shared by distill and evaluate)."""

    columns: dict[str, str] = field(default_factory=dict)
    """Column mapping canonical -> source column, e.g. {"captions": "text"}."""
    image_root: str | None = None
    """Image folder of a benchmark's own files (the folder holding COCO's train2014/ or flickr30k_images/; default:
    found beside the files) and root of relative image paths (Karpathy JSON, path columns; default: the source's
    folder)."""


@dataclass
class DistillConfig(SourceOptions, DecodingOptions, ModelOptions):
    """Everything `narvl-pipe distill` takes. `None` generation fields mean the task's OFA evaluation default."""

    task: str
    """caption, vqa, grounding or entailment."""
    teacher: str
    """Teacher folder (model + tokenizer + image processor, `save_pretrained` layout) or a Hub model id."""
    data: str
    """Data source: a save_to_disk folder, parquet/arrow files, an imagefolder, OFA TSV, a benchmark's own files
    (COCO-Karpathy JSON, VQAv2 questions + annotations, RefCOCO refs(unc).p + instances.json, SNLI-VE jsonl) or a
    Hub dataset id (see `distill.sources`)."""
    out: str
    """Output folder or fsspec URL (`s3://bucket/x`, `memory://x`): parquet shards + manifest.json + README.md, which
    `datasets.load_dataset(OUT)` and the Hub read as they are."""
    split: str = "train"
    """Split of the source to distil, or a union such as `train+restval`."""
    batch_size: int = 32
    """Rows per generate() call (per process)."""
    max_new_tokens: int | None = None
    """Longest generated target, EOS included (default: the task's)."""
    no_repeat_ngram_size: int | None = None
    """Forbid repeating n-grams of this size; 0 = off (default: the task's, caption 3)."""
    num_return_sequences: int = 1
    """Keep the n best beams as `nbest` (1 = only the best, no `nbest` column)."""
    limit: int | None = None
    """Distil only the first N rows of the split."""
    shard_size: int = 1000
    """Source rows per output shard of a map-style source or a parquet file (a webdataset tar is one shard): the unit
    of work shared between processes and tasks."""
    images: bool = True
    """Store the encoded image in each row (else only its `image_path`/`source_index` columns refer to it)."""
    overwrite: bool = False
    """Discard an existing output made with another configuration instead of refusing."""
    num_workers: int | None = None
    """DataLoader worker processes decoding images and tokenising prompts (0 = in the main process). Default: 2, but
    no more than the CPU cores this process may use, less one for the teacher (0 on one core): a worker without a
    core of its own takes the teacher's time and adds its messages (measured on one core with a tiny GIT teacher:
    0 workers 421-439 rows/s, 2 workers 350-369)."""
    revision: str | None = None
    """Hub revision of the teacher (ignored for a local folder)."""
    flush_every: int = 256
    """Flush each shard in progress every ~N rows (rounded up to whole batches): with `flush_interval_s`, the most
    a crash can lose per open shard."""
    flush_interval_s: float = 60.0
    """Also flush a shard in progress when its last flush is this many seconds old."""
    streaming: bool = False
    """Stream a parquet file or folder, or a Hub dataset id, file by file instead of opening it whole (webdataset
    tars, globs and URLs always stream)."""
    num_tasks: int | None = None
    """Independent tasks sharing this output, e.g. a Slurm job array (default: `SLURM_ARRAY_TASK_COUNT`, else 1);
    each takes its share of the units, then helps with units nobody works on."""
    task_index: int | None = None
    """This task's index in 0..num_tasks-1 (default: `SLURM_ARRAY_TASK_ID` minus `SLURM_ARRAY_TASK_MIN`, else 0)."""
    work_dir: str | None = None
    """For an `hf://datasets/user/name` output: the folder (local, shared or an fsspec URL) where the shards are
    written before one resumable upload (`narvl-pipe push`) once the last one is done (default:
    `~/.cache/narvl-pipe/distill/user--name`); tasks on several nodes need a shared one."""
    lease_s: float = 600.0
    """A unit's claim lapses this long after its writer's last flush: then another task may resume it (an owner
    killed on the same host is taken over at once)."""
    progress: bool = True
    """Show a tqdm bar on the main process."""
