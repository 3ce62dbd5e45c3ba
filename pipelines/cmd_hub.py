"""`narvl-pipe push`: share a distilled dataset on the Hub (parquet per split + a regenerated dataset card)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


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
) -> None:
    """Upload a distilled dataset to the Hub as parquet with a dataset card (re-rendered on every push)."""
    from pipelines.hub import push as push_dataset

    result = push_dataset(distilled, repo_id, private=private, dry_run_dir=dry_run, source_license=source_license)
    n_files = sum(len(v) for v in result.data_files.values())
    if result.url is None:
        typer.echo(f"dry run: wrote {result.folder} (README.md + {n_files} parquet file(s)); nothing uploaded")
    else:
        typer.echo(f"pushed {n_files} parquet file(s) + README.md to {repo_id}: {result.url}")
