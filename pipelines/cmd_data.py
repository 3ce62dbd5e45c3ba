"""Placeholder: filled in by the issue that owns this command."""
import typer

app = typer.Typer(no_args_is_help=True)
