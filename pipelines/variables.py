"""Pipeline variables: the values a pipeline YAML leaves to its user (data paths, checkpoints), as `${vars.NAME}`.

A pipeline declares them at the top level:

    variables:
      COCO_ROOT: {path: true, help: "folder holding dataset_coco.json and the COCO images"}
      STUDENT_INIT: {default: OFA-Sys/ofa-base, help: "OFA checkpoint the student starts from"}

and uses them in stage configs (`data: ${vars.COCO_ROOT}`). A value comes from `narvl-pipe run --set NAME=VALUE`,
else the environment variable NAME, else the declared `default`. Everything is checked before any stage runs: an
unset variable, or a `path: true` one whose file or folder does not exist, is a one-line "data not found" error
naming the variable to set. The substituted values are part of the stage configs, hence of their fingerprints.

`narvl-pipe run --override STAGE.FIELD=VALUE` (repeatable) sets one config field of one stage without editing the
YAML, e.g. `--override student.max_steps=4` for a short trial run; VALUE is read as YAML (`4`, `null`, `[a, b]`).
An override is part of the stage's config too, so it gets its own cached artifact.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from distill.errors import UserError

__all__ = ["VAR_REF", "apply_overrides", "parse_assignments", "parse_overrides", "parse_sets",
           "substitute_variables"]

VAR_REF = re.compile(r"\$\{vars\.([A-Za-z_][A-Za-z0-9_]*)\}")
_SPEC_KEYS = {"default", "path", "help"}


def parse_assignments(items: list[str] | None, what: str, form: str, example: str, value_required: bool = False,
                      strip_value: bool = True) -> dict[str, str]:
    """The one parser of repeated `NAME=VALUE` options: `["a=1", "b=2"]` -> `{"a": "1", "b": "2"}`; a malformed item
    is a one-line error naming the option (`what`), the expected `form` and an `example`."""
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or (value_required and not value.strip()):
            raise UserError(f"{what} {item!r}: expected {form}, e.g. {example}")
        out[name.strip()] = value.strip() if strip_value else value
    return out


def parse_sets(items: list[str] | None) -> dict[str, str]:
    """`["COCO_ROOT=/data/coco", ...]` (repeated `--set`) -> `{"COCO_ROOT": "/data/coco"}`."""
    return parse_assignments(items, "--set", "NAME=VALUE", "--set COCO_ROOT=/data/coco")


def parse_overrides(items: list[str] | None) -> dict[tuple[str, str], Any]:
    """`["student.max_steps=4", ...]` (repeated `--override`) -> `{("student", "max_steps"): 4}` (values as YAML)."""
    form, example = "STAGE.FIELD=VALUE", "--override student.max_steps=4"
    out = {}
    for key, value in parse_assignments(items, "--override", form, example, strip_value=False).items():
        stage, dot, name = key.partition(".")
        if not dot or not stage or not name:
            raise UserError(f"--override {key}={value!r}: expected {form}, e.g. {example}")
        try:
            out[(stage, name)] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[(stage, name)] = value
    return out


def apply_overrides(doc: Mapping[str, Any], overrides: Mapping[tuple[str, str], Any],
                    source: str = "the pipeline") -> dict[str, Any]:
    """`doc` with each `(stage, field) -> value` set in that stage's config; an unknown stage is a one-line error
    (an unknown field is reported by the planner, which knows each kind's fields)."""
    if not overrides:
        return dict(doc)
    stages = [dict(s) if isinstance(s, Mapping) else s for s in doc.get("stages") or []]
    names = [str(s.get("name", s.get("kind"))) for s in stages if isinstance(s, Mapping)]
    for (stage, name), value in overrides.items():
        if stage not in names:
            raise UserError(f"--override {stage}.{name}: {source} has no stage {stage!r} (stages: {', '.join(names)})")
        spec = stages[names.index(stage)]
        spec["config"] = {**(spec.get("config") or {}), name: value}
    return {**doc, "stages": stages}


def _specs(doc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    raw = doc.get("variables") or {}
    if not isinstance(raw, Mapping):
        raise UserError("`variables:` must map each NAME to {default, path, help}")
    specs = {}
    for name, spec in raw.items():
        spec = {"default": spec} if not isinstance(spec, Mapping) else dict(spec)
        if set(spec) - _SPEC_KEYS:
            raise UserError(f"variable {name}: unknown key(s) {', '.join(sorted(set(spec) - _SPEC_KEYS))}; "
                            f"allowed: {', '.join(sorted(_SPEC_KEYS))}")
        specs[str(name)] = spec
    return specs


def _replace(value: Any, values: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return VAR_REF.sub(lambda m: values[m.group(1)], value)
    if isinstance(value, Mapping):
        return {k: _replace(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, values) for v in value]
    return value


def _used(value: Any) -> list[str]:
    if isinstance(value, str):
        return VAR_REF.findall(value)
    items = value.values() if isinstance(value, Mapping) else value if isinstance(value, list) else []
    return [n for v in items for n in _used(v)]


def substitute_variables(doc: Mapping[str, Any], sets: Mapping[str, str] | None = None,
                         environ: Mapping[str, str] | None = None, source: str = "the pipeline") -> dict[str, Any]:
    """`doc` with every `${vars.NAME}` in its stages replaced, after the checks described in the module docstring."""
    specs = _specs(doc)
    sets = dict(sets or {})
    environ = os.environ if environ is None else environ
    unknown = sorted(set(sets) - set(specs))
    if unknown:
        raise UserError(f"--set {', '.join(unknown)}: not a variable of {source} "
                        f"(variables: {', '.join(specs) or 'none'})")
    stages = doc.get("stages")
    for name in _used(stages):
        if name not in specs:
            raise UserError(f"${{vars.{name}}} is used but not declared under `variables:` in {source}")
    values: dict[str, str] = {}
    for name, spec in specs.items():
        value = sets.get(name, environ.get(name, spec.get("default")))
        what = f" ({spec['help']})" if spec.get("help") else ""
        if value is None or str(value).strip() == "":
            raise UserError(f"data not found: set {name}{what}, e.g. `{name}=... narvl-pipe run {source}` "
                            f"or `--set {name}=...`")
        value = str(value)
        if spec.get("path") and not Path(value).expanduser().exists():
            raise UserError(f"data not found: {name}={value} does not exist; set {name}{what}")
        values[name] = str(Path(value).expanduser()) if spec.get("path") else value
    out = {k: v for k, v in doc.items() if k != "variables"}
    out["stages"] = _replace(stages, values)
    return out
