"""The dataset card of a distilled dataset (`README.md`, written by `narvl-pipe distill` when its last unit is done and
rendered again by `narvl-pipe push`): `data_cards/distilled_dataset.md` rendered through
`huggingface_hub.DatasetCard.from_template`, with the YAML metadata `datasets` reads (`configs`, `dataset_info`).

Nothing machine-local goes in: a local teacher or source is named by its folder name only, and the usage example
names the student's init as a placeholder unless the teacher is an OFA model on the Hub (a teacher of another family
is never a NARVL student's init).
"""
from __future__ import annotations

import importlib.resources
import json
import os
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
from datasets import DatasetInfo, SplitDict, SplitInfo
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData

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


def public_name(name: Any) -> str:
    """A source reference as published: a Hub id as it is, a local path (distill records them absolute) as its
    folder name."""
    text = json.dumps(name) if isinstance(name, dict) else str(name)
    return Path(text).name if os.path.isabs(text) else text


@dataclass
class CardInput:
    """What a card says about the data itself (from a finished distill output, or from an older save_to_disk one)."""

    features: Any
    """The `datasets.Features` of the rows."""
    splits: dict[str, dict[str, int]]
    """split -> {"rows": n, "bytes": size of the rows in Arrow form}."""
    statistics: list[dict[str, Any]]
    """Rows of the statistics table (`column_statistics`, or `distill.shards.merged_stats` per column)."""
    download_size: int | None = None
    """Bytes of the parquet files."""
    first_task: str = "caption"
    """The task of the first row (when the manifest does not say)."""


def card_input(dsd, download_size: int | None = None) -> CardInput:
    """`CardInput` of a `DatasetDict` (an older save_to_disk output)."""
    first = next(iter(dsd.values()))
    task = first[0]["task"] if "task" in first.column_names and len(first) else "caption"
    return CardInput(first.features, {s: {"rows": len(d), "bytes": d.data.nbytes} for s, d in dsd.items()},
                     column_statistics(dsd), download_size, task)


def teacher_description(manifest: dict) -> tuple[str, str | None]:
    """(how the card names the teacher's kind, its family or None when the manifest predates teacher records)."""
    family = manifest_get(manifest, ("teacher_identity", "family"), default=None)
    if family is None:
        return "the autoregressive teacher", None
    if family == "ofa":
        return "the autoregressive OFA teacher", family
    return f"the autoregressive {family} teacher (a transformers image-text model)", family


def render_card(data: CardInput, manifest: dict, repo_id: str, source_license: str | None = None):
    """The `DatasetCard` of a distilled dataset: YAML metadata (configs, dataset_info, license...) + body."""
    task = manifest_get(manifest, ("task",), default=data.first_task)
    license_ = source_license or manifest_get(manifest, ("source", "license"), ("source_license",), default="unknown")
    source_name = public_name(manifest_get(manifest, ("source", "name"), ("source", "data"), ("source",),
                                            default="unknown"))
    teacher = manifest_get(manifest, ("teacher", "id"), ("teacher_id",), ("teacher",), default="unknown")
    revision = manifest_get(manifest, ("teacher", "revision"), ("teacher_revision",), default=None)
    teacher_on_hub = revision is not None  # distill records a Hub revision, or the sha256 of a local folder
    kind, family = teacher_description(manifest)
    total = sum(s["rows"] for s in data.splits.values())
    card_data = DatasetCardData(
        license=license_,
        pretty_name=f"narvl-pipe distilled {task}: {repo_id.split('/')[-1]}",
        task_categories=[_hub_category(task)],
        size_categories=[_size_category(total)],
        annotations_creators=["machine-generated"],
        source_datasets=["extended"],
        tags=["narvl", *([family] if family else []), "knowledge-distillation", "non-autoregressive", "narvl-pipe"],
    )
    MetadataConfigs(
        {"default": {"data_files": [{"split": s, "path": f"{DATA_DIR}/{s}-*"} for s in data.splits]}}
    ).to_dataset_card_data(card_data)
    info = DatasetInfo(features=data.features, splits=SplitDict())
    for split, sizes in data.splits.items():
        info.splits.add(SplitInfo(name=split, num_bytes=sizes["bytes"], num_examples=sizes["rows"]))
    info.dataset_size = sum(s.num_bytes for s in info.splits.values())
    info.download_size = data.download_size
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)

    generation = manifest_get(manifest, ("generation_config",), ("generation",), ("teacher", "generation_config"),
                              default={})
    counts = manifest_get(manifest, ("counts",), default=None) or {
        k: manifest[k] for k in ("rows", "failures", "shards") if isinstance(manifest.get(k), (int, float))
    }
    wall = manifest_get(manifest, ("wall_time_s",), ("wall_time",), default=None)
    identity = manifest_get(manifest, ("teacher_identity",), default={})
    return DatasetCard.from_template(
        card_data,
        template_path=str(card_template_path()),
        task=task,
        repo_id=repo_id,
        teacher_kind=kind,
        teacher_family=family,
        teacher_id=teacher if teacher_on_hub else Path(str(teacher)).name,
        teacher_on_hub=teacher_on_hub,
        teacher_revision=revision
        or (f"sha256:{manifest['teacher']['sha256']}" if manifest_get(manifest, ("teacher", "sha256")) else "unknown"),
        tokenizer_sha256=identity.get("tokenizer_sha256") if isinstance(identity, dict) else None,
        teacher_extra_json=json.dumps(identity.get("extra") or {}, indent=2, sort_keys=True)
        if isinstance(identity, dict) and identity.get("extra") else None,
        generation_config_json=json.dumps(generation, indent=2, sort_keys=True),
        source_name=source_name,
        source_split=manifest_get(manifest, ("source", "split"), ("split",), default="/".join(data.splits)),
        source_fingerprint=manifest_get(manifest, ("source", "fingerprint"), ("fingerprint",), default=""),
        source_license=license_,
        narvl_pipe_version=manifest_get(manifest, ("narvl_pipe_version",), ("version",), default=package_version()),
        row_counts={split: sizes["rows"] for split, sizes in data.splits.items()},
        run_counts=counts if isinstance(counts, dict) else {},
        wall_time=f"{float(wall):.1f} s" if isinstance(wall, (int, float)) else wall,
        statistics=data.statistics,
        schema=[
            {"name": n, "type": _type_name(f), "meaning": COLUMN_MEANINGS.get(n, "")} for n, f in data.features.items()
        ],
        student_init=teacher if teacher_on_hub and family in ("ofa", None) else "OFA_CHECKPOINT",
        teacher_is_ofa=family in ("ofa", None),
        metric_implementation=manifest_get(manifest, ("metric_implementation",), default=None),
    )


def publishable_path(path: str | None, roots: list[str]) -> str | None:
    """A source file path without the machine-local part: relative to the first root holding it, else its name."""
    if not path or "://" in path or not os.path.isabs(path):  # a URL or a relative path is the same everywhere
        return path
    for root in roots:
        rel = os.path.relpath(path, root)
        if not rel.startswith(".."):
            return Path(rel).as_posix()
    return os.path.basename(path)
