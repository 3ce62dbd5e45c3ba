"""Typer options generated from config dataclasses, so that each config field is declared once: its name, type and
default in the dataclass, its help in the attribute docstring under it.

`config_command(Config, opts)` turns `body(cfg, **cli_only)` into a typer command whose options are the config's
fields (`--field-name`; bools `--x/--no-x`, or a plain `--x` switch when they default to False; `X | None` optional;
`list[X]` repeatable; `Literal[...]` choices) followed by `body`'s own CLI-only parameters. What the generated option
cannot say is declared once per field in an `Opt` (another spelling, a short help, a metavar, a CLI-only
converter such as `--column CANONICAL=SOURCE` -> `columns`).

Library messages name config fields in backticks (`num_beams`); the command spells them as flags (`--num-beams`),
in its help and in the `UserError`s it lets through, so the library never needs to know the CLI's spelling.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import re
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

import typer

from distill.errors import UserError
from distill.seam import MODEL_CHOICES
from distill.sources import CANONICAL_COLUMNS
from pipelines.variables import parse_assignments
from student.presets import RECIPE_FIELDS, option_help

__all__ = ["Opt", "config_command", "field_docs", "spell_fields", "model_opts", "parse_columns", "parse_fields"]


@dataclass(frozen=True)
class Opt:
    """How one config field appears on the command line where the generated option is not enough."""

    help: str | None = None
    """Help text replacing the field's docstring (a shorter one, or one that speaks of other options)."""
    more: str = ""
    """Text appended to the help (e.g. the official recipes' values)."""
    flag: str | None = None
    """The option's spelling when it is not `--field-name` (`output_dir` is `--out`)."""
    off: str | None = None
    """A bool's off switch when it is not `--no-field-name` (`--train-embeddings`)."""
    metavar: str | None = None
    """What `--help` shows for the value."""
    choices: tuple[str, ...] | None = None
    """Allowed values, checked by the parser and shown in `--help`."""
    parse: tuple[Any, Callable[[Any], Any]] | None = None
    """(the type the command line reads, the converter to the field's value): a CLI-only spelling of a field."""
    hidden: bool = False
    """Not on the command line (the field keeps its default)."""


def _owned_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of the fields `cls` itself declares (a string literal right under `name: type`)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):  # no source (built in a REPL): help falls back to empty
        return {}
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef)).body
    return {a.target.id: inspect.cleandoc(b.value.value) for a, b in zip(body, body[1:])
            if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
            and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)}


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Every field's docstring, inherited ones included (a subclass redeclaring a field overrides its doc)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_owned_docs(klass))
    return docs


def _fields_in_help_order(cls: type) -> list[dataclasses.Field]:
    """The required fields in declaration order (the model before what is done with it), then the optional ones:
    the command's own before the groups it inherits (in MRO order)."""
    fields = dataclasses.fields(cls)
    by_name = {f.name: f for f in fields if not _required(f)}
    order = [n for klass in cls.__mro__ for n in vars(klass).get("__annotations__", {}) if n in by_name]
    return [f for f in fields if _required(f)] + [by_name[n] for n in dict.fromkeys(order)]


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


_FIELD_REF = re.compile(r"`([a-z_][a-z0-9_]*)`")


def spell_fields(text: str, flags: dict[str, str]) -> str:
    """`text` with every backticked field name that has an option spelled as that option: `num_beams` -> --num-beams."""
    return _FIELD_REF.sub(lambda m: flags.get(m.group(1), m.group(0)), text)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if (typing.get_origin(tp) in (typing.Union, types.UnionType)) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return tp, False


def _flag_of(f: dataclasses.Field, opt: Opt) -> str:
    return opt.flag or "--" + f.name.replace("_", "-")


def _parameter(f: dataclasses.Field, tp: Any, opt: Opt, help_text: str) -> inspect.Parameter:
    flag = _flag_of(f, opt)
    inner, optional = _unwrap_optional(tp)
    default: Any = ... if _required(f) else (None if f.default is dataclasses.MISSING else f.default)
    decls = [flag]
    annotation: Any = tp
    metavar = opt.metavar
    if opt.parse is not None:
        annotation = Optional[opt.parse[0]]
        if default is not ...:  # not given: the converter's value for None (a field with a factory)
            default = None
    elif inner is bool:
        if default is not False or opt.off:  # a False default needs no off switch
            decls = [f"{flag}/{opt.off or '--no-' + flag[2:]}"]
    elif opt.choices:
        annotation = Optional[Literal[opt.choices]] if optional else Literal[opt.choices]
    elif typing.get_origin(inner) is list:
        annotation = Optional[inner]
        metavar = metavar or f"<{typing.get_args(inner)[0].__name__}>"
        help_text += " Repeatable."
    elif typing.get_origin(inner) is tuple:
        metavar = metavar or " ".join(f"<{a.__name__}>" for a in typing.get_args(inner))
    info = typer.Option(default, *decls, help=help_text, metavar=metavar)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=info)


def config_command(config_cls: type, opts: dict[str, Opt] | None = None) -> Callable[[Callable], Callable]:
    """Decorate `body(cfg, **cli_only)` into a typer command taking `config_cls`'s fields as options, then `body`'s
    own keyword parameters (CLI-only options, declared with `typer.Option` as usual)."""
    opts = opts or {}
    unknown = set(opts) - {f.name for f in dataclasses.fields(config_cls)}
    if unknown:  # a renamed field would otherwise lose its override silently
        raise TypeError(f"Opt for fields {config_cls.__name__} does not have: {sorted(unknown)}")

    def decorate(body: Callable) -> Callable:
        hints = typing.get_type_hints(config_cls)
        docs = field_docs(config_cls)
        fields = [f for f in _fields_in_help_order(config_cls) if not opts.get(f.name, Opt()).hidden]
        flags = {f.name: _flag_of(f, opts.get(f.name, Opt())) for f in fields}
        params = []
        for f in fields:
            opt = opts.get(f.name, Opt())
            text = " ".join(filter(None, [" ".join((opt.help or docs.get(f.name, "")).split()), opt.more]))
            params.append(_parameter(f, hints[f.name], opt, spell_fields(text, flags)))
        cli_only = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
                    for p in list(inspect.signature(body, eval_str=True).parameters.values())[1:]]
        flags.update({p.name: p.default.param_decls[0] for p in cli_only if p.default.param_decls})

        @functools.wraps(body)
        def command(**values: Any) -> Any:
            kwargs = {}
            try:
                for f in fields:
                    value = values.pop(f.name)
                    parse = opts.get(f.name, Opt()).parse
                    if parse is not None:
                        value = parse[1](value)
                    elif value is None and f.default_factory is not dataclasses.MISSING:
                        continue  # not given: the dataclass's own default
                    kwargs[f.name] = value
                return body(config_cls(**kwargs), **values)
            except UserError as err:  # the library names fields; the user typed flags
                err.args = (spell_fields(str(err), flags), *err.args[1:])
                raise

        del command.__wrapped__  # the command's parameters are the generated ones, not body's
        command.__signature__ = inspect.Signature([*params, *cli_only])
        command.__annotations__ = {p.name: p.annotation for p in command.__signature__.parameters.values()}
        command.flags = flags
        return command

    return decorate


def train_opts(trainer: str, config_cls: type) -> dict[str, Opt]:
    """The CLI spelling of the fields `train-student` and `train-teacher` share (`student.train_fields`,
    `student.train_config.TrainConfig`); `trainer` is `student` or `teacher`, whose official recipes the help
    quotes for the recipe fields `config_cls` has."""
    def recipes(field: str) -> str:
        return f"Official {trainer} scripts: {option_help(trainer, field)}."

    names = {f.name for f in dataclasses.fields(config_cls)}
    opts = {name: Opt(more=recipes(name)) for name in RECIPE_FIELDS if name in names}
    opts["freeze_embeddings"] = Opt(off="--train-embeddings", more=recipes("freeze_embeddings"))
    opts["output_dir"] = Opt(flag="--out")
    opts["adam_betas"] = Opt(metavar="<beta1> <beta2>")
    return opts


def parse_fields(items: list[str] | None) -> dict[str, str]:
    """`["premise=two shapes", ...]` (repeated `--field name=value`) -> `{"premise": "two shapes"}`."""
    return parse_assignments(items, "`fields`", "name=value", "premise=two shapes", strip_value=False)


def parse_columns(items: list[str] | None) -> dict[str, str]:
    """`["captions=text", ...]` (repeated `--column canonical=source`) -> `{"captions": "text"}`."""
    return parse_assignments(items, "`columns`", "canonical=source", "captions=text", value_required=True)


def model_opts() -> dict[str, Opt]:
    """The CLI spelling of the fields every model-running command shares (`distill.seam.ModelOptions`,
    `distill.config.SourceOptions`): the closed choices and `--column CANONICAL=SOURCE`."""
    return {
        "columns": Opt(flag="--column", metavar="CANONICAL=SOURCE", parse=(list[str], parse_columns),
                       help="Read a canonical column from another source column, e.g. captions=text (repeatable).",
                       more=f"Canonical columns: {', '.join(CANONICAL_COLUMNS)}."),
        **{name: Opt(choices=choices) for name, choices in MODEL_CHOICES.items()},
    }
