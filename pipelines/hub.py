"""Share a distilled dataset on the Hugging Face Hub: parquet shards per split + a dataset card.

An output of `narvl-pipe distill` already is what the Hub holds (`data/*.parquet` + `README.md` + `manifest.json`):
its shards are uploaded as they are (hard links in the upload folder, no copy), with the card rendered again for
the repo id and the manifest without local paths (`distill.manifest.public_manifest`). What follows is for the
`save_to_disk` outputs of earlier versions, re-encoded into parquet:

The folder that is uploaded is built locally first (`build_upload_folder`), so `--dry-run` and the tests see exactly
what the Hub would get. It only uses `datasets`' and `huggingface_hub`'s public APIs: `Dataset.shard`/`to_parquet`
and each feature's `embed_storage` write the shards, a `configs` entry in the card (`MetadataConfigs`) points the
Hub at them, and `HfApi.upload_folder` (huggingface_hub >= 2; `upload_large_folder` on older releases) uploads it
resumably. The card is rendered from `data_cards/distilled_dataset.md` through `huggingface_hub.DatasetCard` and
regenerated on every push (cards written only when absent go stale).

The folder is kept (by default `DISTILLED/.hub-upload/`, hidden so that `datasets` never reads it as data): a push
that fails (no network, `HF_HUB_OFFLINE=1`, no token) says what failed, and its retry reuses the shards when
`.narvl-build.json` shows they were built from the same data, so only the card is rendered again.

Nothing machine-local is published: local paths of the teacher and the source become their folder names,
`image_path` becomes relative to the source folder, and embedded images keep only their file name.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Features
from huggingface_hub import CommitOperationDelete, HfApi, constants

from distill import shards as sh
from distill.card import DATA_DIR, card_input, manifest_get, publishable_path, render_card  # noqa: F401
from distill.errors import UserError, error_reason
from distill.manifest import card_input as distilled_card_input
from distill.manifest import public_manifest

MAX_SHARD_BYTES = 500 * 1024 * 1024  # the `datasets.push_to_hub` default shard size
BUILD_DIR = ".hub-upload"
PATH_COLUMNS = ("image_path",)
"""Columns holding a local file path, made relative to the source for publishing."""
"""Default upload folder, inside the distilled folder (hidden: `datasets` skips it when reading data files)."""
BUILD_RECORD = ".narvl-build.json"
"""In the upload folder: what its parquet files were built from (never uploaded)."""
BUILD_LAYOUT = 2  # bump when the parquet files' content changes for the same data (forces a rebuild)


class FolderNotWritable(UserError):
    """The upload folder can't be created or written (a read-only distilled folder, a file in the way)."""

    def __init__(self, folder: Path, reason: str, hint: str = "choose a writable folder"):
        super().__init__(f"cannot write the upload folder {folder} ({reason}); {hint}")
        self.folder, self.reason = folder, reason


@dataclass
class PushResult:
    """What a push built (and uploaded, unless dry-run)."""

    folder: Path
    """The folder that was (or would be) uploaded."""
    data_files: dict[str, list[str]]
    """Split -> parquet paths relative to `folder`."""
    url: str | None
    """The Hub URL of the commit, or None on a dry run."""
    reused: bool = False
    """True when the parquet files of an earlier build of the same data were reused (only the card was rendered)."""


def check_repo_id(repo_id: str, name: str = "repo_id") -> None:
    """Refuse a repo id that isn't 'user/name' (`name`: how the caller spells the setting)."""
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise UserError(f"{name} must look like 'user/name', got {repo_id!r}")


def load_distilled(path: str | Path):
    """Open a distilled folder: returns (DatasetDict, manifest dict). A single `Dataset` becomes the manifest's split."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} is not a folder (expected the --out folder of `narvl-pipe distill`)")
    manifest_file = path / "manifest.json"
    manifest = json.loads(manifest_file.read_text()) if manifest_file.exists() else {}
    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError as err:
        raise UserError(f"{path} holds no `save_to_disk` dataset ({err})") from None
    except IndexError:  # datasets can't open a folder saved with 0 data files (an empty dataset)
        raise UserError(f"{path} holds 0 rows: nothing to push") from None
    if isinstance(ds, datasets.Dataset):
        split = str(manifest_get(manifest, ("source", "split"), ("split",), default="train"))
        ds = datasets.DatasetDict({split: ds})
    return ds, manifest


def _source_roots(manifest: dict) -> list[str]:
    """Folders the distilled rows' `image_path`s are relative to: the `--image-root`, then the source's folder."""
    roots = []
    image_root = manifest_get(manifest, ("config", "image_root"), ("source", "image_root"))
    data = manifest_get(manifest, ("source", "data"), ("config", "data"))
    if isinstance(image_root, str):
        roots.append(image_root)
    if isinstance(data, str) and os.path.isabs(data):
        roots.append(data if not Path(data).suffix else str(Path(data).parent))
    return roots


def _publishable_table(table, features, roots: list[str]):
    """One Arrow batch as it is published: media bytes embedded (file name only), `image_path` made relative."""
    for i, name in enumerate(table.column_names):
        feature = features.get(name)
        if hasattr(feature, "embed_storage"):  # Image/Audio...: the Hub copy must hold the bytes, not a local path
            table = table.set_column(i, name, feature.embed_storage(table.column(i).combine_chunks()))
        elif name in PATH_COLUMNS:
            paths = [publishable_path(p, roots) for p in table.column(i).to_pylist()]
            table = table.set_column(i, name, pa.array(paths, type=table.schema.field(i).type))
    return table


def _data_stamp(dsd, roots: list[str]) -> str | None:
    """A hash of what the parquet files are built from (the Arrow files behind each split, their size and time);
    None when it can't be told. A hash, so that the upload folder holds no local path even in its build record."""
    splits = {}
    for split, ds in dsd.items():
        if not ds.cache_files:  # an in-memory dataset: no files to compare, always rebuild
            return None
        files = []
        for cache in ds.cache_files:
            st = os.stat(cache["filename"])
            files.append([os.path.abspath(cache["filename"]), st.st_size, st.st_mtime_ns])
        splits[split] = {"rows": len(ds), "features": ds.features.to_dict(), "files": files}
    stamp = {"layout": BUILD_LAYOUT, "max_shard_bytes": MAX_SHARD_BYTES, "roots": roots, "splits": splits}
    return hashlib.sha256(json.dumps(stamp, sort_keys=True, default=str).encode()).hexdigest()


def _current_build(folder: Path, stamp: str | None) -> dict[str, list[str]] | None:
    """The data files of an earlier build in `folder` when it was made from the same data and is intact."""
    record_file = folder / BUILD_RECORD
    if stamp is None or not record_file.is_file():
        return None
    try:
        record = json.loads(record_file.read_text())
    except ValueError:
        return None
    if record.get("stamp") != stamp:
        return None
    sizes = record.get("sizes", {})
    on_disk = {p.relative_to(folder).as_posix() for p in (folder / DATA_DIR).glob("*.parquet")}
    if on_disk != set(sizes) or any((folder / rel).stat().st_size != size for rel, size in sizes.items()):
        return None
    return record["data_files"]


def write_parquet_shards(dsd, folder: Path, roots: list[str]) -> dict[str, list[str]]:
    """Write each split as `data/<split>-XXXXX-of-YYYYY.parquet`, in the form `_publishable_table` gives."""
    data_dir = folder / DATA_DIR
    if data_dir.exists():  # a re-build must not keep shards of an older dataset
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    files: dict[str, list[str]] = {}
    for split, ds in dsd.items():
        # The Arrow size decides the shard count, as `push_to_hub` does (distilled rows hold their image bytes).
        num_shards = max(1, min(len(ds), math.ceil(ds.data.nbytes / MAX_SHARD_BYTES)))
        files[split] = []
        for index in range(num_shards):
            shard = ds.shard(num_shards=num_shards, index=index, contiguous=True)
            shard = shard.with_format("arrow").map(_publishable_table, batched=True, keep_in_memory=True,
                                                   fn_kwargs={"features": ds.features, "roots": roots})
            rel = f"{DATA_DIR}/{split}-{index:05d}-of-{num_shards:05d}.parquet"
            tmp = folder / (rel + ".tmp")
            shard.with_format(None).to_parquet(str(tmp))
            tmp.rename(folder / rel)
            files[split].append(rel)
    return files


def build_upload_folder(distilled_dir: str | Path, folder: str | Path, repo_id: str,
                        source_license: str | None = None) -> tuple[dict[str, list[str]], bool]:
    """Write the folder a push uploads: `data/<split>-*.parquet` + a freshly rendered `README.md`.

    Returns (split -> parquet paths, reused): the parquet files of an earlier build of the same data are kept."""
    dsd, manifest = load_distilled(distilled_dir)
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / (BUILD_RECORD + ".tmp")
        probe.touch()  # fail here, before any work, when the folder is read-only
        probe.unlink()
    except OSError as err:
        raise FolderNotWritable(folder, err.strerror or str(err)) from None
    if not sum(len(ds) for ds in dsd.values()):
        raise UserError(f"{distilled_dir} holds 0 rows: nothing to push")
    roots = _source_roots(manifest)
    stamp = _data_stamp(dsd, roots)
    data_files = _current_build(folder, stamp)
    reused = data_files is not None
    if data_files is None:
        (folder / BUILD_RECORD).unlink(missing_ok=True)  # written again only once every shard is whole
        data_files = write_parquet_shards(dsd, folder, roots)
        sizes = {rel: (folder / rel).stat().st_size for rels in data_files.values() for rel in rels}
        record = {"stamp": stamp, "data_files": data_files, "sizes": sizes}
        tmp = folder / (BUILD_RECORD + ".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(folder / BUILD_RECORD)
    size = sum((folder / rel).stat().st_size for rels in data_files.values() for rel in rels)
    render_card(card_input(dsd, size), manifest, repo_id, source_license).save(str(folder / "README.md"))
    return data_files, reused


def is_parquet_output(path: Path) -> bool:
    """A `narvl-pipe distill` output of the parquet layout (not an earlier version's save_to_disk folder)."""
    return (path / sh.MANIFEST).is_file() and (path / sh.DATA_DIR).is_dir() and not (path / "state.json").is_file()


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists() and os.path.samefile(src, dst):
        return
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)  # the same bytes, no second copy on disk
    except OSError:
        shutil.copy2(src, dst)


def build_parquet_upload(distilled: Path, folder: Path, repo_id: str, source_license: str | None
                         ) -> dict[str, list[str]]:
    """The upload folder of a parquet output: its shards as they are, the card for `repo_id`, the public manifest."""
    manifest = json.loads((distilled / sh.MANIFEST).read_text())
    if manifest.get("status") != "complete":
        raise UserError(f"{distilled} is an unfinished distill output: rerun the same distill command first")
    shards = sorted((distilled / sh.DATA_DIR).glob("*.parquet"))
    if not manifest.get("rows"):
        raise UserError(f"{distilled} holds 0 rows: nothing to push")
    try:
        (folder / DATA_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FolderNotWritable(folder, err.strerror or str(err)) from None
    keep = {p.name for p in shards}
    for old in (folder / DATA_DIR).glob("*.parquet"):
        if old.name not in keep:
            old.unlink()
    for shard in shards:
        _link_or_copy(shard, folder / DATA_DIR / shard.name)
    features = Features.from_arrow_schema(pq.read_schema(shards[0]))
    card = render_card(distilled_card_input(features, manifest), manifest, repo_id, source_license)
    card.save(str(folder / "README.md"))
    (folder / sh.MANIFEST).write_text(json.dumps(public_manifest(manifest), indent=1, sort_keys=True) + "\n")
    files: dict[str, list[str]] = {}
    for shard in shards:
        files.setdefault(shard.name.split("-")[0], []).append(f"{DATA_DIR}/{shard.name}")
    return files


def _upload(api, repo_id: str, folder: Path, private: bool) -> str:
    """Upload `folder` resumably, deleting remote shards the new build doesn't have; returns the commit URL."""
    large = getattr(api, "upload_large_folder", None)
    if large is None:  # huggingface_hub >= 2: upload_folder resumes (committed files skipped, chunks deduplicated)
        info = api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=str(folder),
                                 commit_message="narvl-pipe push: data + regenerated card",
                                 ignore_patterns=[BUILD_RECORD], delete_patterns=[f"{DATA_DIR}/*"])
        return str(getattr(info, "commit_url", info))
    # Older huggingface_hub: upload_large_folder is the resumable path; it neither deletes nor returns a commit.
    large(repo_id=repo_id, repo_type="dataset", folder_path=str(folder), private=private,
          ignore_patterns=[BUILD_RECORD])
    local = {p.relative_to(folder).as_posix() for p in (folder / DATA_DIR).glob("*.parquet")}
    stale = [f for f in api.list_repo_files(repo_id, repo_type="dataset")
             if f.startswith(f"{DATA_DIR}/") and f not in local]
    if stale:
        api.create_commit(repo_id=repo_id, repo_type="dataset", commit_message="narvl-pipe push: drop stale shards",
                          operations=[CommitOperationDelete(path_in_repo=f) for f in stale])
    return f"{api.endpoint}/datasets/{repo_id}"


def push(
    distilled_dir: str | Path,
    repo_id: str,
    private: bool = False,
    dry_run_dir: str | Path | None = None,
    source_license: str | None = None,
    build_dir: str | Path | None = None,
) -> PushResult:
    """Build the upload folder (default `distilled_dir/.hub-upload`) and upload it, or only build it into
    `dry_run_dir`. A failed upload keeps the folder, and the retry reuses its shards."""
    check_repo_id(repo_id)
    folder = Path(dry_run_dir if dry_run_dir is not None else build_dir or Path(distilled_dir) / BUILD_DIR)
    if is_parquet_output(Path(distilled_dir)):
        files, reused = build_parquet_upload(Path(distilled_dir), folder, repo_id, source_license), True
    else:
        files, reused = build_upload_folder(distilled_dir, folder, repo_id, source_license)
    if dry_run_dir is not None:
        return PushResult(folder, files, None, reused)

    api, step = HfApi(), "creating the repo"
    try:
        api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private)
        step = "uploading"
        url = _upload(api, repo_id, folder, private)
    except Exception as err:  # noqa: BLE001 (network, offline mode, auth: the Hub's errors come in many classes)
        raise UserError(f"push to {repo_id} on {constants.ENDPOINT} failed while {step}: {error_reason(err)}; "
                        f"the upload folder is kept in {folder}: run the same push again to resume "
                        "(its parquet files are reused, not rebuilt)") from err
    return PushResult(folder, files, url, reused)
