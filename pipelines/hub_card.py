"""The dataset card of a pushed distilled dataset: `data_cards/distilled_dataset.md` rendered through
`huggingface_hub.DatasetCard.from_template`, with the YAML metadata `datasets` reads (`configs`, `dataset_info`).

Nothing machine-local goes in: a local teacher or source is named by its folder name only, and the usage example
names the student's init as a placeholder unless the teacher is a Hub model.
"""
from __future__ import annotations

import importlib.resources
import json
import os
from pathlib import Path
from typing import Any

from distill.packages import package_version
from distill.tasks import TASKS, Task

DATA_DIR = "data"
CARD_TEMPLATE = "distilled_dataset.md"

# What each canonical / distilled column means, for the card's schema table.
COLUMN_MEANINGS = {
    "id": "stable row id, carried from the source",
    "task": "narvl-pipe task name",
    "prompt": "the OFA instruction given to the teacher",
    "image": "the input image",
    "image_path": "the image's file path in the source, relative to the source folder (None when it came embedded)",
    "source_index": "row index in the source split",
    "target": "the teacher's best output text (the student's training target)",
    "target_ids": "the teacher tokenizer's ids of `target`, ending with EOS",
    "teacher_logprob": "the teacher's sequence log-probability of `target`",
    "target_len": "length of `target_ids` (EOS included)",
    "target_box": "the teacher's box, x0 y0 x1 y1 in original image pixels (grounding)",
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


def card_template_path() -> Path:
    """The dataset-card template shipped in the `data_cards` package."""
    return Path(str(importlib.resources.files("data_cards") / CARD_TEMPLATE))


def manifest_get(mapping: dict, *paths: tuple[str, ...], default: Any = None) -> Any:
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


def _hub_category(task: str) -> str:
    """The Hub task category of a narvl-pipe task (a task this version does not know: the generic one)."""
    cls = TASKS.get(task)
    return cls.hub_category if cls is not None else Task.hub_category


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




def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M" if n < 10_000_000 else "10M<n<100M"


def _public_name(name: Any) -> str:
    """A source reference as published: a Hub id as it is, a local path (distill records them absolute) as its
    folder name."""
    text = json.dumps(name) if isinstance(name, dict) else str(name)
    return Path(text).name if os.path.isabs(text) else text


def render_card(dsd, manifest: dict, repo_id: str, source_license: str | None = None,
                download_size: int | None = None):
    """The `DatasetCard` for a distilled DatasetDict: YAML metadata (configs, dataset_info, license...) + body.

    `download_size`: bytes of the parquet files, for `dataset_info`."""
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, DatasetCardData

    first = next(iter(dsd.values()))
    first_task = first[0]["task"] if "task" in first.column_names and len(first) else "caption"
    task = manifest_get(manifest, ("task",), default=first_task)
    license_ = source_license or manifest_get(manifest, ("source", "license"), ("source_license",), default="unknown")
    source_name = _public_name(manifest_get(manifest, ("source", "name"), ("source", "data"), ("source",),
                                            default="unknown"))
    teacher = manifest_get(manifest, ("teacher", "id"), ("teacher_id",), ("teacher",), default="unknown")
    revision = manifest_get(manifest, ("teacher", "revision"), ("teacher_revision",), default=None)
    teacher_on_hub = revision is not None  # distill records a Hub revision, or the sha256 of a local folder
    total = sum(len(ds) for ds in dsd.values())
    card_data = DatasetCardData(
        license=license_,
        pretty_name=f"narvl-pipe distilled {task}: {repo_id.split('/')[-1]}",
        task_categories=[_hub_category(task)],
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
        info.splits.add(SplitInfo(name=split, num_bytes=ds.data.nbytes, num_examples=len(ds)))
    info.dataset_size = sum(s.num_bytes for s in info.splits.values())
    info.download_size = download_size
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)

    generation = manifest_get(manifest, ("generation_config",), ("generation",), ("teacher", "generation_config"),
                              default={})
    counts = manifest_get(manifest, ("counts",), default=None) or {
        k: manifest[k] for k in ("rows", "failures", "shards") if isinstance(manifest.get(k), (int, float))
    }
    wall = manifest_get(manifest, ("wall_time_s",), ("wall_time",), default=None)
    return DatasetCard.from_template(
        card_data,
        template_path=str(card_template_path()),
        task=task,
        repo_id=repo_id,
        teacher_id=teacher if teacher_on_hub else Path(str(teacher)).name,
        teacher_on_hub=teacher_on_hub,
        teacher_revision=revision
        or (f"sha256:{manifest['teacher']['sha256']}" if manifest_get(manifest, ("teacher", "sha256")) else "unknown"),
        generation_config_json=json.dumps(generation, indent=2, sort_keys=True),
        source_name=source_name,
        source_split=manifest_get(manifest, ("source", "split"), ("split",), default="/".join(dsd)),
        source_fingerprint=manifest_get(manifest, ("source", "fingerprint"), ("fingerprint",), default=""),
        source_license=license_,
        narvl_pipe_version=manifest_get(manifest, ("narvl_pipe_version",), ("version",), default=package_version()),
        row_counts={split: len(ds) for split, ds in dsd.items()},
        run_counts=counts if isinstance(counts, dict) else {},
        wall_time=f"{float(wall):.1f} s" if isinstance(wall, (int, float)) else wall,
        statistics=column_statistics(dsd),
        schema=[
            {"name": n, "type": _type_name(f), "meaning": COLUMN_MEANINGS.get(n, "")} for n, f in first.features.items()
        ],
        student_init=teacher if teacher_on_hub else "OFA_CHECKPOINT",
        metric_implementation=manifest_get(manifest, ("metric_implementation",), default=None),
    )
