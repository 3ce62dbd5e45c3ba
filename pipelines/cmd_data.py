"""`narvl-pipe data ...`: write built-in datasets. `data shapes` writes the offline shapes world."""
from __future__ import annotations

from pathlib import Path

import typer

from distill.shapes import ShapesConfig

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
) -> None:
    """Write the synthetic shapes world (captions, VQA, grounding, entailment) and its BPE tokenizer."""
    from distill.shapes import write_shapes

    config = ShapesConfig(n_train=n_train, n_val=n_val, n_test=n_test, seed=seed, size=size)
    path = write_shapes(out, config, overwrite=overwrite)
    typer.echo(f"wrote the shapes world ({n_train}/{n_val}/{n_test} rows, {size} px, seed {seed}) to {path}")
