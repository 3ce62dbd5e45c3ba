"""The `narvl-pipe` command line: a thin typer layer over typed functions.

Each stage lives in its own `cmd_*` module, which imports its heavy dependencies (torch, transformers,
datasets) inside the command body so that `narvl-pipe --help` stays fast.
"""
from __future__ import annotations

import typer

from pipelines import cmd_data, cmd_distill, cmd_hub, cmd_run, cmd_student, cmd_teacher

app = typer.Typer(
    name="narvl-pipe",
    help="Distil an autoregressive OFA teacher into a one-pass NARVL student (Query-CTC).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(cmd_data.app, name="data", help="Write built-in datasets (the offline shapes world).")
app.command("train-teacher")(cmd_teacher.train_teacher)
app.command("distill")(cmd_distill.distill)
app.command("train-student")(cmd_student.train_student)
app.command("evaluate")(cmd_student.evaluate)
app.command("predict")(cmd_student.predict)
app.command("push")(cmd_hub.push)
app.command("run")(cmd_run.run)
app.command("demo")(cmd_run.demo)


def main() -> None:
    from distill.errors import UserError

    try:
        app()
    except UserError as err:  # bad input: one clear line, no traceback
        typer.echo(f"error: {err}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
