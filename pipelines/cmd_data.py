"""`narvl-pipe data ...`: write built-in datasets. `data shapes` writes the offline shapes world."""
from __future__ import annotations

from pathlib import Path

import typer

from distill.errors import UserError
from distill.shapes import ShapesConfig, write_shapes
from distill.shapes_webdataset import write_shapes_webdataset

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)  # plain help: see pipelines/cli.py
_DEFAULTS = ShapesConfig()


@app.command("shapes", short_help="Write the synthetic shapes world (all four tasks).")
def shapes(
    out: Path = typer.Option(..., "--out", help="Output folder: DatasetDict (save_to_disk) + tokenizer/ + shapes_config.json."),
    n_train: int = typer.Option(_DEFAULTS.n_train, "--n-train", help="Rows in the train split."),
    n_val: int = typer.Option(_DEFAULTS.n_val, "--n-val", help="Rows in the validation split."),
    n_test: int = typer.Option(_DEFAULTS.n_test, "--n-test", help="Rows in the test split."),
    seed: int = typer.Option(_DEFAULTS.seed, "--seed", help="World seed: the same seed writes byte-identical data."),
    size: int = typer.Option(_DEFAULTS.size, "--size", help="Image side in pixels (>= 24)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing shapes world at --out."),
    format: str = typer.Option("datasets", "--format", help="datasets (a save_to_disk DatasetDict + tokenizer) or "
                               "webdataset (the train split as tar shards laid out as img2dataset writes them)."),
    shards: int = typer.Option(4, "--shards", help="Tar shards of --format webdataset."),
) -> None:
    """Write the synthetic shapes world (captions, VQA, grounding, entailment) and its BPE tokenizer."""
    config = ShapesConfig(n_train=n_train, n_val=n_val, n_test=n_test, seed=seed, size=size)
    if format == "webdataset":
        path = write_shapes_webdataset(out, config, shards)
        typer.echo(f"wrote {n_train} train rows of the shapes world ({size} px, seed {seed}) as {shards} webdataset "
                   f"shards to {path}: distil them with --data '{path}/*.tar'")
        return
    if format != "datasets":
        raise UserError(f"--format must be datasets or webdataset, got {format!r}")
    path = write_shapes(out, config, overwrite=overwrite)
    typer.echo(f"wrote the shapes world ({n_train}/{n_val}/{n_test} rows, {size} px, seed {seed}) to {path}")
