"""Options generated from config dataclasses (`pipelines.options`): every field is an option with the dataclass's
default and its docstring as help, and library errors that name a field reach the user as its flag."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest
import typer
from typer.testing import CliRunner

from distill.config import DistillConfig
from distill.errors import UserError
from pipelines import cmd_distill, cmd_student, cmd_teacher
from pipelines.cli import Command, app
from pipelines.options import Opt, config_command, field_docs, spell_fields
from student.eval_config import EvalConfig, PredictConfig
from student.train_student import StudentTrainConfig
from student.train_teacher import TeacherTrainConfig

CONFIGS = {"distill": DistillConfig, "train-student": StudentTrainConfig, "train-teacher": TeacherTrainConfig,
           "evaluate": EvalConfig, "predict": PredictConfig}
FUNCTIONS = {"distill": cmd_distill.distill, "train-student": cmd_student.train_student,
             "train-teacher": cmd_teacher.train_teacher, "evaluate": cmd_student.evaluate, "predict": cmd_student.predict}


def _help(target, args: list[str]) -> str:
    result = CliRunner().invoke(target, [*args, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_field_is_an_option_with_the_dataclass_default(name):
    command = typer.main.get_command(app).commands[name]
    params = {p.name: p for p in command.params}
    text = _help(app, [name])
    for f in dataclasses.fields(CONFIGS[name]):
        assert f.name in params, f"{name}: field {f.name} has no option"
        param = params[f.name]
        assert param.opts[0] in text
        if f.default is not dataclasses.MISSING:
            assert param.default == f.default or (param.default is None and f.default is None), f.name
        elif f.default_factory is not dataclasses.MISSING:  # `columns`: None on the command line = the factory's
            assert param.default is None
        else:
            assert param.required, f.name
        doc = spell_fields(field_docs(CONFIGS[name]).get(f.name, ""), FUNCTIONS[name].flags)
        first_words = " ".join(doc.split()[:3])
        assert first_words and (first_words in text or f.name in {"columns", "arch", "fields"}), f.name


def test_recipe_options_are_declared_once_and_quote_each_trainer_s_scripts():
    from student.presets import RECIPE_FIELDS, option_help

    from student.train_student import StudentTrainConfig
    from student.train_teacher import TeacherTrainConfig

    for name, trainer, cls in [("train-student", "student", StudentTrainConfig),
                               ("train-teacher", "teacher", TeacherTrainConfig)]:
        text = _help(app, [name])
        fields = {f.name for f in dataclasses.fields(cls)}
        for f in RECIPE_FIELDS:
            if f in fields:
                assert f"Official {trainer} scripts: {option_help(trainer, f)}." in text, (name, f)
    assert "--freeze-embeddings / --train-embeddings" in _help(app, ["train-student"])
    assert "--drop-worst-ratio" in _help(app, ["train-teacher"]) and "--drop-worst" not in _help(app, ["train-student"])


def test_each_training_field_is_declared_once():
    """Issue 19 point 7: a field (`lr`, the evaluation defaults...) is declared in one class of the trainer configs
    and the recipe table, and reaches the others by inheritance (mixins)."""
    from student.presets import Recipe
    from student.train_fields import EvalFields
    from student.train_student import StudentTrainConfig
    from student.train_teacher import TeacherTrainConfig

    for cls in (StudentTrainConfig, TeacherTrainConfig, Recipe):
        owners: dict[str, list[str]] = {}
        for klass in cls.__mro__:
            for name in vars(klass).get("__annotations__", {}):
                owners.setdefault(name, []).append(klass.__name__)
        twice = {name: ks for name, ks in owners.items() if len(ks) > 1}
        assert not twice, (cls.__name__, twice)
        assert owners["lr"] == ["RecipeFields"]
    assert "eval_batch_size" in vars(EvalFields)["__annotations__"]


@dataclass(kw_only=True)
class Group:
    """A shared group, mixed in."""

    shared: int = 3
    """A field every `Toy` inherits."""


@dataclass(kw_only=True)
class Toy(Group):
    """A config the test builds a command from."""

    name: str
    """The required one."""
    steps: int | None = None
    """Optional count, more than `shared` when given."""
    fast: bool = False
    """A switch."""
    shuffle: bool = True
    """Shuffle the rows."""
    mode: str = "a"
    """One of a or b."""
    tags: list[str] | None = None
    """Tags."""
    pairs: dict[str, str] = field(default_factory=dict)
    """Given as KEY=VALUE."""


def _toy_app(config_cls=Toy, opts=None, seen=None) -> typer.Typer:
    opts = {"mode": Opt(choices=("a", "b")), "pairs": Opt(flag="--pair", metavar="KEY=VALUE",
                                                         parse=(list[str], lambda v: dict(x.split("=") for x in v or [])))
            } if opts is None else opts

    @config_command(config_cls, opts)
    def run(cfg, verbose: bool = typer.Option(False, "--verbose", help="CLI only.")) -> None:
        """Run the toy."""
        if cfg.steps is not None and cfg.steps <= cfg.shared:
            raise UserError(f"`steps` {cfg.steps} must exceed `shared` {cfg.shared}; see `name`s, not `other`")
        seen.append((cfg, verbose))

    toy = typer.Typer(rich_markup_mode=None)
    toy.command("run", cls=Command)(run)
    toy.command("other")(lambda: None)  # a group, so that `run` is a subcommand as in narvl-pipe
    return toy


def test_a_config_dataclass_becomes_a_command():
    seen: list = []
    toy = _toy_app(seen=seen)
    text = _help(toy, ["run"])
    for piece in ["--name <str> The required one. [required]", "--steps <int> Optional count, more than --shared",
                  "--fast A switch.", "--shuffle / --no-shuffle Shuffle the rows. [default: shuffle]",
                  "--mode <a|b> One of a or b. [default: a]", "--tags <str> Tags. Repeatable.",
                  "--pair KEY=VALUE Given as KEY=VALUE.", "--shared <int> A field every `Toy` inherits. [default: 3]",
                  "--verbose CLI only."]:
        assert piece in text
    assert "--no-fast" not in text and "<bool>" not in text
    assert text.index("--name") < text.index("--steps") < text.index("--shared") < text.index("--verbose")

    result = CliRunner().invoke(toy, ["run", "--name", "x", "--steps", "9", "--fast", "--no-shuffle", "--mode", "b",
                                      "--tags", "t1", "--tags", "t2", "--pair", "k=v", "--verbose"])
    assert result.exit_code == 0, result.output
    assert seen.pop() == (Toy(name="x", steps=9, fast=True, shuffle=False, mode="b", tags=["t1", "t2"],
                              pairs={"k": "v"}), True)
    assert CliRunner().invoke(toy, ["run", "--name", "x"]).exit_code == 0
    assert seen.pop() == (Toy(name="x"), False)
    bad = CliRunner().invoke(toy, ["run", "--name", "x", "--mode", "c"])
    assert bad.exit_code == 2 and "'c' is not one of 'a', 'b'" in bad.output

    error = CliRunner().invoke(toy, ["run", "--name", "x", "--steps", "2"]).exception
    assert isinstance(error, UserError)
    assert str(error) == "--steps 2 must exceed --shared 3; see --names, not `other`"


def test_adding_a_field_adds_its_option():
    @dataclass(kw_only=True)
    class Bigger(Toy):
        new_knob: float = 0.5
        """Added later."""

    assert "--new-knob" not in _help(_toy_app(), ["run"])
    assert "--new-knob <float> Added later. [default: 0.5]" in _help(_toy_app(Bigger), ["run"])
    assert "--new-knob" not in _help(_toy_app(Bigger, {"new_knob": Opt(hidden=True)}), ["run"])


def test_spell_fields_touches_only_known_backticked_names():
    flags = {"num_beams": "--num-beams", "output_dir": "--out"}
    assert spell_fields("`num_beams` 3 > `output_dir`'s `nbest`; num_beams", flags) == (
        "--num-beams 3 > --out's `nbest`; num_beams")


def test_cli_error_names_the_flag(tmp_path):
    """A library error (`model` of `distill.hub_ids`) reaches the user as the option they typed."""
    missing = tmp_path / "nowhere"
    result = CliRunner().invoke(app, ["evaluate", "--model", str(missing), "--task", "caption", "--data", "x"])
    assert isinstance(result.exception, UserError)
    assert str(result.exception) == f"--model {missing}: no such folder (and not a Hub model id)"
