"""Share a distilled dataset on the Hugging Face Hub: parquet shards per split + a dataset card.

The folder that would be uploaded is built locally first (`build_upload_folder`), so `--dry-run` and the tests see
exactly what the Hub would get. The card is rendered from `data_cards/distilled_dataset.md` through
`huggingface_hub.DatasetCard.from_template` and regenerated on every push (cards written only when absent go stale).
"""
from __future__ import annotations

import importlib.resources
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_DIR = "data"
CARD_TEMPLATE = "distilled_dataset.md"
MAX_SHARD_BYTES = 500 * 1024 * 1024  # the `datasets.push_to_hub` default shard size

# Hub task categories per narvl-pipe task (https://huggingface.co/tasks).
TASK_CATEGORIES = {
    "caption": "image-to-text",
    "vqa": "visual-question-answering",
    "grounding": "object-detection",
    "entailment": "image-text-to-text",
}

# What each canonical / distilled column means, for the card's schema table.
COLUMN_MEANINGS = {
    "id": "stable row id, carried from the source",
    "task": "narvl-pipe task name",
    "prompt": "the OFA instruction given to the teacher",
    "image": "the input image",
    "image_path": "the source's image file path (None when the image came embedded)",
    "source_index": "row index in the source split",
    "target": "the teacher's best output text (the student's training target)",
    "target_ids": "the teacher tokenizer's ids of `target`, ending with EOS",
    "teacher_logprob": "the teacher's sequence log-probability of `target`",
    "target_len": "length of `target_ids` (EOS included)",
    "nbest": "the teacher's n-best outputs (with `--num-return-sequences`)",
    "nbest_logprobs": "sequence log-probabilities of the n-best outputs",
    "captions": "the source's reference captions",
    "question": "VQA question",
    "answers": "the source's human answers",
    "region_text": "grounding region text",
    "box": "the source's box, x0 y0 x1 y1 in original image pixels",
    "premise": "entailment premise ('' = none)",
    "hypothesis": "entailment hypothesis",
    "label": "the source's entailment label",
}

STAT_COLUMNS = ("teacher_logprob", "target_len")
PERCENTILES = (5, 25, 50, 75, 95)


@dataclass
class PushResult:
    """What a push built (and uploaded, unless dry-run)."""

    folder: Path
    """The folder that was (or would be) uploaded."""
    data_files: dict[str, list[str]]
    """Split -> parquet paths relative to `folder`."""
    url: str | None
    """The Hub URL of the commit, or None on a dry run."""


def card_template_path() -> Path:
    """The dataset-card template shipped in the `data_cards` package."""
    return Path(str(importlib.resources.files("data_cards") / CARD_TEMPLATE))


def load_distilled(path: str | Path):
    """Open a distilled folder: returns (DatasetDict, manifest dict). A single `Dataset` becomes the manifest's split."""
    import datasets

    from distill.errors import UserError

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} is not a folder (expected the --out folder of `narvl-pipe distill`)")
    manifest_file = path / "manifest.json"
    manifest = json.loads(manifest_file.read_text()) if manifest_file.exists() else {}
    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError as err:
        raise UserError(f"{path} holds no `save_to_disk` dataset ({err})") from None
    if isinstance(ds, datasets.Dataset):
        split = str(_get(manifest, ("source", "split"), ("split",), default="train"))
        ds = datasets.DatasetDict({split: ds})
    return ds, manifest


def _get(mapping: dict, *paths: tuple[str, ...], default: Any = None) -> Any:
    """The first of several nested keys found in `mapping` (manifests evolve; read them leniently)."""
    for keys in paths:
        node: Any = mapping
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                break
            node = node[key]
        else:
            if node not in (None, ""):
                return node
    return default


def column_statistics(dsd) -> list[dict[str, Any]]:
    """Mean/std/min/percentiles/max of `teacher_logprob` and `target_len` for each split (rows of the card's table)."""
    import numpy as np

    rows = []
    for split, ds in dsd.items():
        for column in STAT_COLUMNS:
            if column not in ds.column_names or len(ds) == 0:
                continue
            values = np.asarray(ds.data.column(column).to_numpy(zero_copy_only=False), dtype=np.float64)
            pct = np.percentile(values, PERCENTILES)
            stats = {"mean": values.mean(), "std": values.std(), "min": values.min(), "max": values.max()}
            stats.update({f"p{p}": v for p, v in zip(PERCENTILES, pct)})
            rows.append({"split": split, "column": column, **{k: f"{float(v):.3f}" for k, v in stats.items()}})
    return rows


def _type_name(feature) -> str:
    """A short readable type for a `datasets` feature: `string`, `list[int32]`, `image`..."""
    import datasets

    if isinstance(feature, datasets.Value):
        return feature.dtype
    if isinstance(feature, (datasets.List, datasets.LargeList)):
        return f"list[{_type_name(feature.feature)}]"
    if isinstance(feature, dict):
        return "{" + ", ".join(f"{k}: {_type_name(v)}" for k, v in feature.items()) + "}"
    if isinstance(feature, list):
        return f"list[{_type_name(feature[0])}]"
    return type(feature).__name__.lower()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("narvl-pipe")
    except PackageNotFoundError:
        return "unknown"


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M" if n < 10_000_000 else "10M<n<100M"


def write_parquet_shards(dsd, folder: Path) -> dict[str, list[str]]:
    """Write each split as `data/<split>-XXXXX-of-YYYYY.parquet` with images embedded (as `push_to_hub` does)."""
    from datasets.features.features import require_decoding
    from datasets.table import embed_table_storage

    data_dir = folder / DATA_DIR
    if data_dir.exists():  # a re-build must not keep shards of an older dataset
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    files: dict[str, list[str]] = {}
    for split, ds in dsd.items():
        num_shards = int(ds._estimate_nbytes() / MAX_SHARD_BYTES) + 1
        embed = any(require_decoding(f, ignore_decode_attribute=True) for f in ds.features.values())
        files[split] = []
        for index in range(num_shards):
            shard = ds.shard(num_shards=num_shards, index=index, contiguous=True)
            if embed:  # image paths -> bytes inside the parquet file, so the Hub copy is self-contained
                shard = shard.with_format("arrow").map(embed_table_storage, batched=True, keep_in_memory=True)
            rel = f"{DATA_DIR}/{split}-{index:05d}-of-{num_shards:05d}.parquet"
            tmp = folder / (rel + ".tmp")
            shard.to_parquet(str(tmp))
            tmp.rename(folder / rel)
            files[split].append(rel)
    return files


def render_card(dsd, manifest: dict, repo_id: str, source_license: str | None = None):
    """The `DatasetCard` for a distilled DatasetDict: YAML metadata (configs, dataset_info, license...) + body."""
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, DatasetCardData

    first = next(iter(dsd.values()))
    task = _get(manifest, ("task",), default=(first[0]["task"] if "task" in first.column_names and len(first) else "caption"))
    license_ = source_license or _get(manifest, ("source", "license"), ("source_license",), default="unknown")
    source_name = _get(manifest, ("source", "name"), ("source", "data"), ("source",), default="unknown")
    if isinstance(source_name, dict):
        source_name = json.dumps(source_name)
    total = sum(len(ds) for ds in dsd.values())
    card_data = DatasetCardData(
        license=license_,
        pretty_name=f"narvl-pipe distilled {task}: {repo_id.split('/')[-1]}",
        task_categories=[TASK_CATEGORIES.get(task, "image-text-to-text")],
        size_categories=[_size_category(total)],
        annotations_creators=["machine-generated"],
        source_datasets=["extended"],
        tags=["narvl", "ofa", "knowledge-distillation", "non-autoregressive", "narvl-pipe"],
    )
    MetadataConfigs(
        {"default": {"data_files": [{"split": s, "path": f"{DATA_DIR}/{s}-*"} for s in dsd]}}
    ).to_dataset_card_data(card_data)
    info = DatasetInfo(features=first.features, splits=SplitDict())
    for split, ds in dsd.items():
        info.splits.add(SplitInfo(name=split, num_bytes=ds._estimate_nbytes(), num_examples=len(ds)))
    info.dataset_size = sum(s.num_bytes for s in info.splits.values())
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)

    generation = _get(manifest, ("generation_config",), ("generation",), ("teacher", "generation_config"), default={})
    counts = _get(manifest, ("counts",), default=None) or {
        k: manifest[k] for k in ("rows", "failures", "shards") if isinstance(manifest.get(k), (int, float))
    }
    wall = _get(manifest, ("wall_time_s",), ("wall_time",), default=None)
    return DatasetCard.from_template(
        card_data,
        template_path=str(card_template_path()),
        task=task,
        repo_id=repo_id,
        teacher_id=_get(manifest, ("teacher", "id"), ("teacher_id",), ("teacher",), default="unknown"),
        teacher_revision=_get(manifest, ("teacher", "revision"), ("teacher_revision",), default=None)
        or (f"sha256:{manifest['teacher']['sha256']}" if _get(manifest, ("teacher", "sha256")) else "unknown"),
        generation_config_json=json.dumps(generation, indent=2, sort_keys=True),
        source_name=source_name,
        source_split=_get(manifest, ("source", "split"), ("split",), default="/".join(dsd)),
        source_fingerprint=_get(manifest, ("source", "fingerprint"), ("fingerprint",), default=""),
        source_license=license_,
        narvl_pipe_version=_get(manifest, ("narvl_pipe_version",), ("version",), default=_version()),
        row_counts={split: len(ds) for split, ds in dsd.items()},
        run_counts=counts if isinstance(counts, dict) else {},
        wall_time=f"{float(wall):.1f} s" if isinstance(wall, (int, float)) else wall,
        statistics=column_statistics(dsd),
        schema=[
            {"name": n, "type": _type_name(f), "meaning": COLUMN_MEANINGS.get(n, "")} for n, f in first.features.items()
        ],
        student_init=_get(manifest, ("teacher", "id"), ("teacher_id",), default="OFA-Sys/ofa-base"),
    )


def build_upload_folder(distilled_dir: str | Path, folder: str | Path, repo_id: str, source_license: str | None = None):
    """Write the folder a push uploads: `data/<split>-*.parquet` + a freshly rendered `README.md`."""
    dsd, manifest = load_distilled(distilled_dir)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data_files = write_parquet_shards(dsd, folder)
    card = render_card(dsd, manifest, repo_id, source_license)
    card.save(str(folder / "README.md"))
    return data_files


def push(
    distilled_dir: str | Path,
    repo_id: str,
    private: bool = False,
    dry_run_dir: str | Path | None = None,
    source_license: str | None = None,
) -> PushResult:
    """Build the upload folder and upload it (resumable), or only build it into `dry_run_dir`."""
    from distill.errors import UserError

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise UserError(f"--repo-id must look like 'user/name', got {repo_id!r}")
    if dry_run_dir is not None:
        folder = Path(dry_run_dir)
        files = build_upload_folder(distilled_dir, folder, repo_id, source_license)
        return PushResult(folder, files, None)

    from huggingface_hub import HfApi

    api = HfApi()
    with tempfile.TemporaryDirectory(prefix="narvl-push-") as tmp:
        folder = Path(tmp)
        files = build_upload_folder(distilled_dir, folder, repo_id, source_license)
        api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private)
        # `upload_folder` is huggingface_hub's resumable path (the former `upload_large_folder`): re-running after an
        # interruption skips committed files and deduplicates uploaded chunks. `delete_patterns` drops stale shards.
        info = api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=str(folder),
            commit_message="narvl-pipe push: data + regenerated card",
            delete_patterns=[f"{DATA_DIR}/*"],
        )
    return PushResult(folder, files, str(getattr(info, "commit_url", info)))
