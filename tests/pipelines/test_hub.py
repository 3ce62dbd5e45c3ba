"""`narvl-pipe push`: the folder that would be uploaded (the Hub is unreachable here, so `--dry-run` is what we check)."""
from __future__ import annotations

import glob
import json
import statistics
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml
from huggingface_hub import DatasetCard, DatasetCardData, RepoCard
from PIL import Image

from pipelines import hub

REPO = "someone/shapes-distilled"


def _png(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))


def _write_distilled(path, n: int, seed: int = 0) -> datasets.Dataset:
    """A folder shaped like `narvl-pipe distill` output: a save_to_disk Dataset + manifest.json."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(3, 9, n)
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "task": datasets.Value("string"),
            "prompt": datasets.Value("string"),
            "image": datasets.Image(),
            "captions": datasets.List(datasets.Value("string")),
            "target": datasets.Value("string"),
            "target_ids": datasets.List(datasets.Value("int32")),
            "teacher_logprob": datasets.Value("float32"),
            "target_len": datasets.Value("int32"),
        }
    )
    ds = datasets.Dataset.from_dict(
        {
            "id": [f"img{i}" for i in range(n)],
            "task": ["caption"] * n,
            "prompt": [" what does the image describe?"] * n,
            "image": [_png(seed * 1000 + i) for i in range(n)],
            "captions": [[f"a red circle {i}", f"circle {i} in red"] for i in range(n)],
            "target": [f"a red circle {i}" for i in range(n)],
            "target_ids": [list(range(4, 4 + int(k) - 1)) + [2] for k in lens],
            "teacher_logprob": rng.normal(-3.0, 1.0, n).astype(np.float32).tolist(),
            "target_len": lens.tolist(),
        },
        features=features,
    )
    ds.save_to_disk(str(path))
    manifest = {  # the layout `distill.run` writes
        "task": "caption",
        "teacher": {"id": "runs/teacher", "sha256": "abc123"},
        "generation": {"num_beams": 5, "max_new_tokens": 16, "no_repeat_ngram_size": 3},
        "source": {"data": "shapes-world", "split": "train", "fingerprint": "f00d"},
        "rows": n,
        "failures": 0,
        "shards": 1,
        "wall_time_s": 12.5,
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    return ds


def _rows(ds) -> list[dict]:
    out = []
    for row in ds:
        row = dict(row)
        row["image"] = np.asarray(row["image"].convert("RGB")).tolist()
        out.append(row)
    return out


@pytest.fixture
def distilled(tmp_path):
    path = tmp_path / "distilled"
    ds = _write_distilled(path, n=23)
    return path, ds


def test_dry_run_folder_is_a_loadable_hub_dataset(distilled, tmp_path):
    path, ds = distilled
    out = tmp_path / "upload"
    result = hub.push(path, REPO, dry_run_dir=out, source_license="apache-2.0")
    assert result.url is None and (out / "README.md").exists()

    # The card's YAML parses with huggingface_hub and its metadata round-trips through DatasetCardData.
    card = RepoCard.load(out / "README.md", repo_type="dataset")
    meta = card.data.to_dict()
    assert DatasetCardData(**meta).to_dict() == meta
    raw_yaml = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert raw_yaml["license"] == "apache-2.0"

    # `configs` point at existing parquet files, one pattern per split; dataset_info counts the rows.
    (config,) = meta["configs"]
    assert config["config_name"] == "default"
    for entry in config["data_files"]:
        matched = glob.glob(str(out / entry["path"]))
        assert matched and all(m.endswith(".parquet") for m in matched)
    assert {s["name"]: s["num_examples"] for s in meta["dataset_info"]["splits"]} == {"train": 23}

    # What the Hub would serve equals the local dataset, row for row (images embedded in the parquet files).
    loaded = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf-cache"))
    assert list(loaded) == ["train"]
    assert loaded["train"].features == ds.features
    assert _rows(loaded["train"]) == _rows(datasets.load_from_disk(str(path)))


def test_card_body_holds_provenance_stats_schema_usage_and_citations(distilled, tmp_path):
    path, ds = distilled
    out = tmp_path / "upload"
    hub.push(path, REPO, dry_run_dir=out, source_license="apache-2.0")
    body = DatasetCard.load(out / "README.md").text
    for needle in [
        "`runs/teacher`",
        "sha256:abc123",
        "rows = 23, failures = 0, shards = 1",
        '"num_beams": 5',
        "shapes-world",
        "apache-2.0",
        "| train | 23 |",
        f'load_dataset("{REPO}")',
        f"narvl-pipe train-student --task caption --data {REPO}",
        "Non-autoregressive Sequence-to-Sequence Vision-Language Models",
        "Shi, Kunyu",
        "CVPR",
        "OFA",
        "ICML",
        "| `target_ids` | `list[int32]` |",
        "| `image` | `image` |",
    ]:
        assert needle in body, needle
    # Statistics against the standard library on the same column.
    logp = ds["teacher_logprob"]
    assert f"| train | `teacher_logprob` | {statistics.fmean(logp):.3f} |" in body
    assert f"| {statistics.median(ds['target_len']):.3f} |" in body


def test_repush_regenerates_card_and_drops_stale_shards(distilled, tmp_path):
    path, _ = distilled
    out = tmp_path / "upload"
    hub.push(path, REPO, dry_run_dir=out, source_license="apache-2.0")
    first = (out / "README.md").read_text()

    other = tmp_path / "distilled2"
    ds2 = _write_distilled(other, n=7, seed=1)
    hub.push(other, REPO, dry_run_dir=out)
    second = (out / "README.md").read_text()
    assert first != second and "| train | 7 |" in second
    assert "license: unknown" in second  # the distill manifest holds no license: unknown unless --source-license
    assert f"{statistics.fmean(ds2['teacher_logprob']):.3f}" in second
    # (a fresh cache: datasets 5.2 keys a local folder's cache on its card, not on its data files, so a re-built
    # folder with an unchanged card would be served stale from ~/.cache)
    assert len(datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf-cache"))["train"]) == 7


def test_push_uploads_folder_through_hfapi(distilled, monkeypatch):
    """The Hub is unreachable here: record the HfApi calls and check what they were given."""
    import huggingface_hub

    path, _ = distilled
    calls = []

    class RecordingApi:
        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw))

        def upload_folder(self, **kw):
            root = Path(kw["folder_path"])
            files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
            calls.append(("upload_folder", kw["repo_id"], {**kw, "files": files}))
            return "https://hub/commit/1"

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    result = hub.push(path, REPO, private=True)
    assert result.url == "https://hub/commit/1"
    (_, repo, kw1), (_, repo2, kw2) = calls
    assert repo == repo2 == REPO
    assert kw1 == {"repo_type": "dataset", "exist_ok": True, "private": True}
    assert kw2["repo_type"] == "dataset" and kw2["files"][0] == "README.md"
    assert any(f.startswith("data/train-") and f.endswith(".parquet") for f in kw2["files"])


def test_cli_push_dry_run_and_bad_repo_id(distilled, tmp_path, monkeypatch, capsys):
    from pipelines.cli import main

    path, _ = distilled
    monkeypatch.setattr(sys, "argv", ["narvl-pipe", "push", str(path), "--repo-id", REPO, "--dry-run", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code in (0, None)
    assert "nothing uploaded" in capsys.readouterr().out

    monkeypatch.setattr(sys, "argv", ["narvl-pipe", "push", str(path), "--repo-id", "noslash"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "user/name" in err and "\n" not in err
