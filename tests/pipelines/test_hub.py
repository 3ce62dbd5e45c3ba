"""`narvl-pipe push`: the folder that would be uploaded (the Hub is unreachable here, so `--dry-run` is what we check)."""
from __future__ import annotations

import glob
import io
import json
import os
import socket
import statistics
import subprocess
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
    """A folder shaped like `narvl-pipe distill` output: a save_to_disk Dataset + manifest.json, made from an
    imagefolder-like source next to it (so rows carry absolute local image paths, as distill writes them)."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(3, 9, n)
    source = path.parent / "source"
    (source / "images").mkdir(parents=True, exist_ok=True)
    paths, images = [], []
    for i in range(n):
        buf = io.BytesIO()
        _png(seed * 1000 + i).save(buf, format="PNG")
        file = source / "images" / f"img{seed}-{i}.png"
        file.write_bytes(buf.getvalue())
        paths.append(str(file))
        images.append({"bytes": buf.getvalue(), "path": str(file)})
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "task": datasets.Value("string"),
            "prompt": datasets.Value("string"),
            "image": datasets.Image(),
            "image_path": datasets.Value("string"),
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
            "image": images,
            "image_path": paths,
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
        "teacher": {"id": str(path.parent / "runs" / "teacher"), "sha256": "abc123"},
        "generation": {"num_beams": 5, "max_new_tokens": 16, "no_repeat_ngram_size": 3},
        "source": {"data": str(source), "split": "train", "fingerprint": "f00d"},
        "config": {"image_root": None, "data": str(source)},
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
        row["image_path"] = Path(row["image_path"]).name  # published relative to the source folder
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
        "`teacher` (a local checkpoint, not on the Hub",
        "sha256:abc123",
        "rows = 23, failures = 0, shards = 1",
        '"num_beams": 5',
        "`source`",
        "apache-2.0",
        "| train | 23 |",
        f'load_dataset("{REPO}")',
        f"narvl-pipe train-student --task caption --data {REPO} --init OFA_CHECKPOINT",
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


def _uploaded(folder: str, ignore: list[str]) -> list[str]:
    """The files an upload of `folder` sends: all but the ignored names and huggingface_hub's own .cache/."""
    root = Path(folder)
    return sorted(rel for rel in (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
                  if rel not in ignore and not rel.startswith(".cache/"))


def test_push_uploads_folder_through_hfapi(distilled, monkeypatch):
    """The Hub is unreachable here: record the HfApi calls (huggingface_hub >= 2: resumable `upload_folder`)."""
    path, _ = distilled
    calls = []

    class RecordingApi:
        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw))

        def upload_folder(self, **kw):
            calls.append(("upload_folder", kw["repo_id"], {**kw, "files": _uploaded(kw["folder_path"],
                                                                                  kw["ignore_patterns"])}))
            return "https://hub/commit/1"

    monkeypatch.setattr(hub, "HfApi", RecordingApi)
    result = hub.push(path, REPO, private=True)
    assert result.url == "https://hub/commit/1" and result.folder == path / hub.BUILD_DIR
    (_, repo, kw1), (_, repo2, kw2) = calls
    assert repo == repo2 == REPO
    assert kw1 == {"repo_type": "dataset", "exist_ok": True, "private": True}
    assert kw2["repo_type"] == "dataset" and kw2["delete_patterns"] == ["data/*"]
    assert kw2["files"] == ["README.md", "data/train-00000-of-00001.parquet"]


def test_push_on_older_hub_uses_upload_large_folder_and_drops_stale_shards(distilled, monkeypatch):
    """huggingface_hub < 2: `upload_large_folder` resumes but deletes nothing, so stale shards go in a second commit."""
    path, _ = distilled
    calls = []

    class OldApi:
        endpoint = "https://hub"

        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", kw))

        def upload_large_folder(self, **kw):
            calls.append(("upload_large_folder", _uploaded(kw["folder_path"], kw["ignore_patterns"])))

        def list_repo_files(self, repo_id, repo_type):
            return ["README.md", "data/train-00000-of-00001.parquet", "data/train-00001-of-00002.parquet"]

        def create_commit(self, **kw):
            calls.append(("create_commit", [op.path_in_repo for op in kw["operations"]]))

    monkeypatch.setattr(hub, "HfApi", OldApi)
    result = hub.push(path, REPO)
    assert result.url == f"https://hub/datasets/{REPO}"
    assert calls[1:] == [("upload_large_folder", ["README.md", "data/train-00000-of-00001.parquet"]),
                         ("create_commit", ["data/train-00001-of-00002.parquet"])]


def _closed_port() -> socket.socket:
    """A loopback port that refuses connections: bound, never listening (held open by the caller, so no race)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def _cli_push(path, env: dict) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "push", str(path), "--repo-id", REPO],
                          env={**clean, "HF_HOME": str(path.parent / "hf-home"), **env},
                          capture_output=True, text=True, timeout=300)


def test_push_without_network_says_why_keeps_the_folder_and_the_retry_builds_nothing(distilled):
    path, _ = distilled
    offline = _cli_push(path, {"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 2 and "Traceback" not in offline.stderr, offline.stderr
    line = offline.stderr.strip().splitlines()[-1]  # after the build's progress bars
    assert line.startswith(f"error: push to {REPO} on https://huggingface.co failed")
    assert "offline mode is enabled" in line and "HF_HUB_OFFLINE" in line
    folder = path / hub.BUILD_DIR
    assert f"kept in {folder}" in line and "reused, not rebuilt" in line
    shards = sorted((folder / "data").glob("*.parquet"))
    assert shards and (folder / "README.md").is_file()
    before = {p.name: os.stat(p).st_mtime_ns for p in shards}
    (folder / "README.md").write_text("stale")

    with _closed_port() as port:
        endpoint = f"http://127.0.0.1:{port.getsockname()[1]}"
        unreachable = _cli_push(path, {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": endpoint})
    assert unreachable.returncode == 2 and "Traceback" not in unreachable.stderr, unreachable.stderr
    line = unreachable.stderr.strip().splitlines()[-1]
    assert "Creating parquet" not in unreachable.stderr  # nothing was built again
    assert line.startswith(f"error: push to {REPO} on {endpoint} failed while creating the repo")
    assert "Connection refused" in line and f"kept in {folder}" in line
    assert {p.name: os.stat(p).st_mtime_ns for p in sorted((folder / "data").glob("*.parquet"))} == before
    assert (folder / "README.md").read_text() != "stale"  # the card is rendered on every push


def test_dry_run_reuses_shards_of_the_same_data_and_rerenders_the_card(distilled, tmp_path):
    path, _ = distilled
    out = tmp_path / "upload"
    first = hub.push(path, REPO, dry_run_dir=out, source_license="apache-2.0")
    shard = out / first.data_files["train"][0]
    stamp = os.stat(shard).st_mtime_ns
    again = hub.push(path, REPO, dry_run_dir=out, source_license="mit")
    assert not first.reused and again.reused and os.stat(shard).st_mtime_ns == stamp
    assert "license: mit" in (out / "README.md").read_text()
    shard.write_bytes(shard.read_bytes()[:-10])  # a damaged shard is never reused
    assert not hub.push(path, REPO, dry_run_dir=out).reused
    assert len(datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf-cache"))["train"]) == 23


def test_published_folder_holds_nothing_machine_local(distilled, tmp_path):
    import pyarrow.parquet as pq

    path, _ = distilled
    out = tmp_path / "upload"
    hub.push(path, REPO, dry_run_dir=out)
    card = (out / "README.md").read_text()
    assert str(tmp_path) not in card and "--init /" not in card
    assert str(tmp_path) not in (out / hub.BUILD_RECORD).read_text()  # not uploaded, but the folder may be shared
    table = pq.read_table(next((out / "data").glob("*.parquet")))
    rows = table.to_pylist()
    assert str(tmp_path) not in json.dumps(rows, default=lambda b: "<bytes>")
    assert rows[3]["image_path"] == "images/img0-3.png" and rows[3]["image"]["path"] == "img0-3.png"
    assert hub.publishable_path("/elsewhere/x/y.jpg", [str(tmp_path)]) == "y.jpg"
    assert hub.publishable_path("https://host/y.jpg", []) == "https://host/y.jpg"
    assert hub.publishable_path("rel/y.jpg", [str(tmp_path)]) == "rel/y.jpg"


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
    assert err.startswith("error:") and "user/name" in err and "\n" not in err and "--repo-id" in err


def test_cli_push_refuses_an_unwritable_build_folder_and_an_empty_dataset(distilled, tmp_path, monkeypatch, capsys):
    from pipelines.cli import main

    path, _ = distilled
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    empty = tmp_path / "empty"
    datasets.Dataset.from_dict({"id": [], "target": []}).save_to_disk(str(empty))
    capsys.readouterr()
    for args, needle in [
        ([str(path), "--build-dir", str(blocker / "sub")], f"cannot write the upload folder {blocker / 'sub'} "
                                                           "(Not a directory); pass a writable --build-dir DIR"),
        ([str(empty)], f"{empty} holds 0 rows: nothing to push"),
    ]:
        monkeypatch.setattr(sys, "argv", ["narvl-pipe", "push", *args, "--repo-id", REPO])
        with pytest.raises(SystemExit) as exc:
            main()
        assert exc.value.code == 2
        assert capsys.readouterr().err.strip() == f"error: {needle}"


def test_build_needs_no_private_datasets_helper(distilled, tmp_path, monkeypatch):
    """A `datasets` upgrade may drop its private helpers: our build must not call `Dataset._estimate_nbytes`
    (`datasets` itself may: it ships its own)."""
    path, ds = distilled
    private = datasets.Dataset._estimate_nbytes

    def guarded(self):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        assert not caller.startswith("pipelines"), f"{caller} calls the private Dataset._estimate_nbytes"
        return private(self)

    monkeypatch.setattr(datasets.Dataset, "_estimate_nbytes", guarded)
    out = tmp_path / "upload"
    hub.push(path, REPO, dry_run_dir=out)
    loaded = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf-cache"))["train"]
    assert _rows(loaded) == _rows(datasets.load_from_disk(str(path)))


def test_a_hub_download_failure_says_why_not_only_its_class():
    from distill.errors import UserError
    from distill.run import resolve_teacher

    with pytest.raises(UserError) as err:  # HF_HUB_OFFLINE=1 in the suite (tests/conftest.py)
        resolve_teacher("someone/no-such-teacher", None)
    message = str(err.value)
    assert "\n" not in message and "(LocalEntryNotFoundError)" in message
    assert "outgoing traffic has been disabled" in message
