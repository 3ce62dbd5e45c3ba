"""`narvl-pipe push`: share a distilled dataset on the Hub (parquet per split + a regenerated dataset card)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipelines import hub


def push(
    distilled: Path = typer.Argument(..., metavar="DISTILLED", help="The --out folder of `narvl-pipe distill`."),
    repo_id: str = typer.Option(..., "--repo-id", help="Hub dataset repo, 'user/name'."),
    private: bool = typer.Option(False, "--private", help="Create the repo as private."),
    dry_run: Optional[Path] = typer.Option(
        None, "--dry-run", metavar="OUTDIR", help="Write the folder that would be uploaded into OUTDIR; upload nothing."
    ),
    source_license: Optional[str] = typer.Option(
        None, "--source-license", help="License of the source dataset (Hub license id); default: from the manifest."
    ),
    build_dir: Optional[Path] = typer.Option(
        None, "--build-dir", metavar="DIR", help="Where the upload is built and kept for a retry (default: "
        "DISTILLED/.hub-upload); a retry reuses its parquet files when the data is unchanged."
    ),
) -> None:
    """Upload a distilled dataset to the Hub as parquet with a dataset card (re-rendered on every push)."""
    hub.check_repo_id(repo_id, "--repo-id")
    try:
        result = hub.push(distilled, repo_id, private=private, dry_run_dir=dry_run, source_license=source_license,
                          build_dir=build_dir)
    except hub.FolderNotWritable as err:
        flag = "--dry-run OUTDIR" if dry_run is not None else "--build-dir DIR"
        raise hub.FolderNotWritable(err.folder, err.reason, f"pass a writable {flag}") from None
    n_files = sum(len(v) for v in result.data_files.values())
    built = "reused from an earlier build of the same data" if result.reused else "built"
    if result.url is None:
        typer.echo(f"dry run: wrote {result.folder} (README.md + {n_files} parquet file(s), {built}); nothing uploaded")
    else:
        typer.echo(f"pushed {n_files} parquet file(s) ({built}) + README.md to {repo_id}: {result.url}")
