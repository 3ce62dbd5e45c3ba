"""The `narvl-pipe` command line: a thin typer layer over typed functions.

Each stage lives in its own `cmd_*` module; `serve` imports its optional dependencies (the `serve` extra) only
when it runs.

Help is click's plain layout (`rich_markup_mode=None`): typer's rich tables cut long option names at 80 columns
and print `<bool>` after flags. `Command` shows required arguments as click does (`DISTILLED`), not `{distilled}`.
"""
from __future__ import annotations

import torch.distributed as dist
import typer
from typer.core import TyperCommand

from distill.errors import Interrupted, UserError
from pipelines import cmd_data, cmd_distill, cmd_hub, cmd_run, cmd_serve, cmd_student, cmd_teacher


_NO_BREAK = "\u2011"  # a non-breaking hyphen, as wide as "-"


class HelpFormatter(typer.Context.formatter_class):
    """Click's help layout, wrapping option help between words only: `--batch-size` is never cut into `--batch-`
    and `size` at the end of a line."""

    def write_dl(self, rows, col_max: int = 30, col_spacing: int = 2) -> None:
        start = len(self.buffer)
        super().write_dl([(term, text.replace("-", _NO_BREAK)) for term, text in rows], col_max, col_spacing)
        self.buffer[start:] = [piece.replace(_NO_BREAK, "-") for piece in self.buffer[start:]]


class Context(typer.Context):
    formatter_class = HelpFormatter


class Command(TyperCommand):
    """A typer command whose usage line names arguments the way a user types them: `ARG`, `[ARG]`, `ARG...`."""

    context_class = Context

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name != "argument":
                pieces.extend(param.get_usage_pieces(ctx))
                continue
            name = (param.metavar or param.name or "arg").upper()
            name = name if param.required else f"[{name}]"
            pieces.append(name + ("..." if param.nargs != 1 else ""))
        return pieces


app = typer.Typer(
    name="narvl-pipe",
    help="Distil an autoregressive OFA teacher into a one-pass NARVL student (Query-CTC).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
app.add_typer(cmd_data.app, name="data", help="Write built-in datasets (the offline shapes world).")
# `short_help`: the command list would otherwise cut each first sentence at the terminal width with "...".
for name, function, short_help in [
    ("train-teacher", cmd_teacher.train_teacher, "Train the autoregressive OFA teacher (cross-entropy)."),
    ("distill", cmd_distill.distill, "Write the teacher's outputs over a dataset (resumable)."),
    ("train-student", cmd_student.train_student, "Train a NARVL student with Query-CTC (KD or raw labels)."),
    ("evaluate", cmd_student.evaluate, "Score a model on a split: task metric and latency."),
    ("predict", cmd_student.predict, "Caption, answer, box or label for one image."),
    ("export", cmd_serve.export, "Export a NARVL student to ONNX (checked against PyTorch)."),
    ("serve", cmd_serve.serve, "Serve predictions over HTTP, batching concurrent requests."),
    ("push", cmd_hub.push, "Share a distilled dataset on the Hub (parquet + card)."),
    ("run", cmd_run.run, "Run a pipeline YAML; finished stages are cached."),
    ("demo", cmd_run.demo, "Offline end to end on the shapes world, with a report."),
]:
    app.command(name, cls=Command, short_help=short_help)(function)


def main() -> None:
    try:
        app()
    except SystemExit as exit_:  # click ends every command with one, 0 on success
        if not exit_.code:
            _end_process_group()
        raise
    except Interrupted as err:  # SIGTERM / Ctrl-C: what was done is saved; one line saying how to resume
        typer.echo(f"{err}", err=True)
        raise SystemExit(err.exit_code) from None
    except UserError as err:  # bad input: one clear line, no traceback
        typer.echo(f"error: {err}", err=True)
        raise SystemExit(2) from None


def _end_process_group() -> None:
    """Destroy the process group of a successful run under torchrun (a no-op otherwise).

    A process that exits with its Gloo group alive can abort (SIGABRT, "terminate called without an active
    exception") while the interpreter tears down the group's worker threads: rank 1 of a 2-process train-student
    did, at random, once the other rank was still writing the model. Only on success: a rank that failed may leave
    the others inside a collective, where destroying the group could hang (torchrun ends them instead).
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
