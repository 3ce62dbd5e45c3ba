"""`narvl-pipe ... --help` on an 80-column terminal: every option whole, no type placeholders a user can't type."""
from __future__ import annotations

import re

import pytest
import torch.distributed as dist
import typer
from typer.testing import CliRunner

from pipelines.cli import app, main

COMMANDS = [[], ["data"], ["data", "shapes"], ["train-teacher"], ["distill"], ["train-student"], ["evaluate"],
            ["predict"], ["export"], ["serve"], ["push"], ["run"], ["demo"]]


def _help(args: list[str]) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    return result.output


def _click_command(args: list[str]):
    command = typer.main.get_command(app)
    for name in args:
        command = command.commands[name]
    return command


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a) or "narvl-pipe")
def test_help_fits_80_columns_with_every_option_whole(args):
    text = _help(args)
    assert "<bool>" not in text
    assert not re.search(r"\{[^}]*\}", text), "usage placeholders like {distilled} are not what a user types"
    assert "…" not in text and not re.search(r"[^\]]\.\.\.$", text, re.M), "nothing is cut short"
    assert max(len(line) for line in text.splitlines()) <= 80
    for param in _click_command(args).params:
        for name in [*param.opts, *param.secondary_opts]:
            if name.startswith("--"):
                assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), f"{name} missing or cut"


def test_usage_names_arguments_as_typed():
    assert "push [OPTIONS] DISTILLED" in " ".join(_help(["push"]).split())
    assert "run [OPTIONS] PIPELINE" in " ".join(_help(["run"]).split())


def test_column_help_lists_the_canonical_columns():
    from distill.sources import CANONICAL_COLUMNS

    text = " ".join(_help(["distill"]).split())
    for column in CANONICAL_COLUMNS:
        assert re.search(rf"(?<![\w-]){column}(?![\w-])", text.split("--column", 1)[1].split("--resolution")[0]), column


@pytest.mark.parametrize("task, prediction, output, note", [
    ("caption", "", "", "the model decoded no tokens"),
    ("caption", "", ". .", "its output '. .' holds no caption answer"),
    ("entailment", None, "", "the model decoded no tokens"),
])
def test_empty_prediction_comes_with_a_hint(task, prediction, output, note):
    from pipelines.cmd_student import prediction_lines
    from student.evaluate import Answer as Prediction

    line, hint = prediction_lines(task, Prediction(output=output, prediction=prediction))
    assert line == "" and hint.startswith("note: empty prediction") and note in hint and "\n" not in hint
    assert prediction_lines("caption", Prediction(output="a red circle", prediction="a red circle")) == (
        "a red circle", None)
    assert prediction_lines("grounding", Prediction(output="", prediction=None))[0].startswith("no box")


def test_the_two_demos_write_to_different_folders_and_say_what_they_run(monkeypatch):
    """`demo` and `demo --tasks all` never share a default folder (one report would replace the other); Makefile and
    README name the same folders; --help describes the four-task demo's per-task teachers."""
    from pathlib import Path

    from pipelines import cmd_run

    ran = []
    monkeypatch.setattr(cmd_run, "run_demo", lambda out, force, pipeline, jobs: ran.append((out, pipeline.name, jobs)))
    monkeypatch.setattr(cmd_run, "default_jobs", lambda: 2)
    for args in ([], ["--tasks", "all"], ["--tasks", "all", "--out", "elsewhere", "--jobs", "1"]):
        assert CliRunner().invoke(app, ["demo", *args]).exit_code == 0
    assert ran == [(Path("runs/demo"), "demo.yaml", 2), (Path("runs/demo-all"), "demo_all.yaml", 2),
                   (Path("elsewhere"), "demo_all.yaml", 1)]
    text = " ".join(_help(["demo"]).split())
    assert "runs/demo-all with --tasks all" in text
    assert "fine-tunes it into one AR teacher per task" in text and "trains ONE multi-task OFA" in text
    root = Path(__file__).resolve().parents[2]
    make = (root / "Makefile").read_text()
    assert "demo --out runs/demo\n" in make and "demo --tasks all --out runs/demo-all\n" in make
    assert "output in `runs/demo-all`" in (root / "README.md").read_text()


@pytest.mark.parametrize("argv, code, alive", [(["data", "shapes", "--help"], 0, False),
                                               (["distill", "--task", "nope", "--teacher", "t", "--data", "d",
                                                 "--out", "o"], 2, True)])
def test_a_successful_run_ends_its_process_group(argv, code, alive, tmp_path, monkeypatch):
    """Under torchrun a rank that exits with its Gloo group alive can abort (SIGABRT) in the interpreter's teardown;
    `main` destroys the group after a successful command, and leaves it to torchrun after a failed one (another rank
    may be inside a collective)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        monkeypatch.setattr("sys.argv", ["narvl-pipe", *argv])
        with pytest.raises(SystemExit) as exit_:
            main()
        assert (exit_.value.code or 0) == code
        assert dist.is_initialized() == alive
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
