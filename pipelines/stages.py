"""Cached pipelines: stage kinds, fingerprints, the stage cache and the YAML runner behind `narvl-pipe run`.

A pipeline YAML lists stages in order; each has a `name`, a `kind` (a registered `StageKind`) and a `config` (the
fields of that kind's config dataclass). A config value may reference an earlier stage's artifact folder as
`${stages.NAME}` (optionally followed by a sub-path, e.g. `${stages.shapes}/tokenizer`):

    name: example
    stages:
      - name: shapes
        kind: data
        config: {n_train: 200, seed: 0}
      - name: teacher
        kind: train-teacher
        config: {task: caption, data: "${stages.shapes}", max_steps: 100}

Cache rules:
- A stage's artifact lives in `OUT/<name>-<fingerprint>/`. The fingerprint hashes the stage's kind and its resolved
  config (YAML values over the dataclass defaults), where each reference is replaced by the referenced stage's
  folder name, which holds *its* fingerprint. So changing a stage's config re-runs it and every stage downstream of
  it, and no other; the output folder's location is not part of any fingerprint, nor are the fields its kind
  declares `non_result` (workers, logging, trackers: how a stage runs, not what it writes).
- A stage is complete when `OUT/<name>-<fingerprint>/stage_complete.json` exists; it is written last, atomically.
  Complete stages are skipped. An incomplete folder of a resumable kind (trainers, distill) is handed back to the
  stage function, which resumes from its own checkpoints/shards; other kinds restart from an empty folder.
- `--force NAME` re-runs NAME from scratch and, because its fingerprint does not change, every stage downstream of it.
  Before any stage runs, each forced folder gets `stage_forced.json` (and loses its completion marker), so a forced
  run that is interrupted still re-runs them all next time; a stage clears the mark by starting from scratch.
- Once a stage is complete, its kind's `resume_state` sub-folders (trainer checkpoints) are deleted: they only
  serve the resume of an interrupted stage, and the artifact (the final model) is complete without them.
- `stage_config.json` (the resolved config, with real paths) is written next to the artifact when the stage ends
  (some stage functions require an empty output folder), just before the completion marker.
- `OUT/<name>` is a symlink to the stage's current folder, for humans; nothing reads it.
- `jobs` > 1 (`narvl-pipe run --jobs N`) runs a stage as soon as the stages it references are complete, up to N at
  once (`pipelines.parallel`); every rule above holds per stage.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from distill.errors import UserError
from distill.jsonio import jsonable, write_json
from distill.locks import ProcessLock
from pipelines.parallel import run_parallel
from pipelines.stage_kind import StageKind
from pipelines.stage_kinds import builtin_kinds
from pipelines.variables import apply_overrides, substitute_variables

FINGERPRINT_VERSION = 1  # bump when the artifact layout of any stage changes incompatibly
COMPLETE_MARKER = "stage_complete.json"
FORCED_MARKER = "stage_forced.json"
STAGE_CONFIG = "stage_config.json"
LOCK_FILE = ".narvl-run.lock"
_REF = re.compile(r"\$\{stages\.([A-Za-z0-9_.-]+?)\}")
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


_KINDS: dict[str, StageKind] = {}


def register_stage_kind(kind: StageKind) -> None:
    """Make `kind` usable in pipeline YAMLs (later registrations of a name replace earlier ones)."""
    _KINDS[kind.name] = kind


def stage_kinds(needed: Iterable[str] | None = None) -> dict[str, StageKind]:
    """Registered kinds: the built-in ones (data, train-teacher, ...) join them unless every kind in `needed` is
    registered already."""
    if needed is None or any(k not in _KINDS for k in needed):
        for kind in builtin_kinds():  # a kind registered under the same name first wins
            _KINDS.setdefault(kind.name, kind)
    return _KINDS


@dataclass
class StageSpec:
    """One stage as written in the pipeline YAML."""

    name: str
    kind: str
    config: dict[str, Any]

    @property
    def deps(self) -> list[str]:
        """Names of the stages this one references, in order of first appearance."""
        found: list[str] = []
        for value in _walk_strings(self.config):
            for name in _REF.findall(value):
                if name not in found:
                    found.append(name)
        return found


@dataclass
class Pipeline:
    """A parsed pipeline YAML."""

    name: str
    stages: list[StageSpec]
    source: Path | None = None


@dataclass
class PlannedStage:
    """A stage with its fingerprint, folder and resolved config (paths filled in)."""

    spec: StageSpec
    kind: StageKind
    fingerprint: str
    dir: Path
    config: dict[str, Any]

    @property
    def complete(self) -> bool:
        return (self.dir / COMPLETE_MARKER).exists() and not (self.dir / FORCED_MARKER).exists()


@dataclass
class StageOutcome:
    """What the runner did with one stage."""

    name: str
    status: str
    """`skipped` (cached), `ran`, `resumed` or `forced`."""
    dir: Path
    seconds: float
    cpu_seconds: float = 0.0
    """CPU time of this process and its finished children (DataLoader workers) during the stage."""
    cached: dict[str, Any] | None = None
    """A skipped stage's completion record from the run that computed it (`seconds`, `cpu_seconds`, `finished`)."""


def _walk_strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _walk_strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _walk_strings(v)


def _substitute(value: Any, targets: Mapping[str, str]) -> Any:
    """Replace every `${stages.NAME}` in strings (also nested in lists/mappings) with `targets[NAME]`."""
    if isinstance(value, str):
        return _REF.sub(lambda m: targets[m.group(1)], value)
    if isinstance(value, Mapping):
        return {k: _substitute(v, targets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_substitute(v, targets) for v in value]
    return value


def load_pipeline(path: str | Path, sets: Mapping[str, str] | None = None,
                  overrides: Mapping[tuple[str, str], Any] | None = None) -> Pipeline:
    """Parse and validate a pipeline YAML (kinds exist, names unique, references point at earlier stages); its
    `${vars.NAME}` are filled from `sets`, the environment or their defaults, and `overrides` (`(stage, field) ->
    value`) set stage config fields (`pipelines.variables`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pipeline file {path} does not exist")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if isinstance(doc, Mapping) and ("variables" in doc or sets):
        doc = substitute_variables(doc, sets, source=str(path))
    if isinstance(doc, Mapping) and overrides:
        doc = apply_overrides(doc, overrides, source=str(path))
    pipe = parse_pipeline(doc, default_name=path.stem)
    pipe.source = path
    return pipe


def parse_pipeline(doc: Any, default_name: str = "pipeline") -> Pipeline:
    """Validate a pipeline given as a mapping (the parsed YAML)."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("stages"), list) or not doc["stages"]:
        raise UserError("a pipeline needs a non-empty `stages:` list of {name, kind, config} mappings")
    kinds = stage_kinds(raw.get("kind") for raw in doc["stages"] if isinstance(raw, Mapping))
    stages: list[StageSpec] = []
    for i, raw in enumerate(doc["stages"]):
        if not isinstance(raw, Mapping) or set(raw) - {"name", "kind", "config"} or "kind" not in raw:
            raise UserError(f"stage #{i + 1} must be a mapping with keys name, kind and config; got {raw!r}")
        name = str(raw.get("name", raw["kind"]))
        if not _NAME.match(name):
            raise UserError(f"stage name {name!r} may only hold letters, digits, '_' and '-'")
        if any(s.name == name for s in stages):
            raise UserError(f"two stages are named {name!r}; stage names must be unique")
        if raw["kind"] not in kinds:
            raise UserError(f"stage {name!r}: unknown kind {raw['kind']!r}; known kinds: {', '.join(sorted(kinds))}")
        config = raw.get("config") or {}
        if not isinstance(config, Mapping):
            raise UserError(f"stage {name!r}: `config` must be a mapping of config fields, got {config!r}")
        spec = StageSpec(name, raw["kind"], dict(config))
        earlier = {s.name for s in stages}
        for dep in spec.deps:
            if dep not in earlier:
                where = "a later stage" if any(r.get("name") == dep for r in doc["stages"]) else "no stage"
                raise UserError(f"stage {name!r} references ${{stages.{dep}}}, which is {where}; "
                                f"references must name an earlier stage ({', '.join(earlier) or 'none here'})")
        stages.append(spec)
    return Pipeline(str(doc.get("name", default_name)), stages)


def _defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


def fingerprint(kind: str, config: Mapping[str, Any]) -> str:
    """16 hex digits of sha256 over the kind and the resolved config (references already replaced by folder names)."""
    payload = json.dumps({"v": FINGERPRINT_VERSION, "kind": kind, "config": jsonable(config)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def plan(pipe: Pipeline, out: str | Path) -> list[PlannedStage]:
    """Resolve every stage's config and fingerprint (no compute): all config errors surface here, before any stage runs."""
    out = Path(out).resolve()
    kinds = stage_kinds([s.kind for s in pipe.stages])
    dir_names: dict[str, str] = {}
    planned: list[PlannedStage] = []
    for spec in pipe.stages:
        kind = kinds[spec.kind]
        names = {f.name for f in dataclasses.fields(kind.config_cls)}
        reserved = set(kind.fixed) | ({kind.out_field} if kind.out_field else set())
        bad = sorted(set(spec.config) - (names - reserved))
        if bad:
            allowed = ", ".join(sorted(names - reserved))
            raise UserError(f"stage {spec.name!r} ({spec.kind}): unknown config field(s) {', '.join(bad)}; "
                            f"allowed: {allowed}")
        resolved = {k: v for k, v in _defaults(kind.config_cls).items() if k not in reserved}
        resolved.update(spec.config)
        missing = sorted(names - reserved - set(resolved))
        if missing:
            raise UserError(f"stage {spec.name!r} ({spec.kind}): missing required config field(s) {', '.join(missing)}")
        result_fields = {k: v for k, v in resolved.items() if k not in kind.non_result}
        fp = fingerprint(spec.kind, _substitute(result_fields, dir_names))
        dir_names[spec.name] = f"{spec.name}-{fp}"
        config = jsonable(_substitute(resolved, {n: str(out / d) for n, d in dir_names.items()}))
        stage = PlannedStage(spec, kind, fp, out / dir_names[spec.name], config)
        validate = getattr(make_config(stage), "validate", None)
        if callable(validate):
            validate()
        planned.append(stage)
    return planned


def make_config(stage: PlannedStage) -> Any:
    """The stage's config dataclass instance, with the artifact folder and the runner's fixed fields set."""
    extra = dict(stage.kind.fixed)
    if stage.kind.out_field:
        extra[stage.kind.out_field] = str(stage.dir)
    return stage.kind.config_cls(**stage.config, **extra)


def downstream(pipe: Pipeline, names: Iterable[str]) -> set[str]:
    """`names` and every stage that depends on them, directly or not."""
    hit = set(names)
    for spec in pipe.stages:  # stages are in dependency order, so one pass suffices
        if hit.intersection(spec.deps):
            hit.add(spec.name)
    return hit


def _cpu_seconds() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _mark_forced(stages: list[PlannedStage], rerun: set[str]) -> None:
    """Mark every forced folder on disk before anything runs, so an interruption cannot undo `--force`.
    Downstream first: killed midway, a marked stage never sits below an unmarked one it depends on."""
    for stage in reversed(stages):
        if stage.spec.name in rerun and stage.dir.exists():
            write_json(stage.dir / FORCED_MARKER, {"forced": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            (stage.dir / COMPLETE_MARKER).unlink(missing_ok=True)


def _drop_resume_state(stage: PlannedStage) -> str:
    """Delete a complete stage's resume-only folders; returns a note for the log ('' when there was nothing)."""
    freed = 0
    for name in stage.kind.resume_state:
        folder = stage.dir / name
        if folder.is_dir():
            freed += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            shutil.rmtree(folder)
    names = ", ".join(f"{name}/" for name in stage.kind.resume_state)
    return f"; removed {names} ({freed / 1e6:.1f} MB, only needed to resume)" if freed else ""


def format_duration(seconds: float) -> str:
    minutes, sec = divmod(int(round(seconds)), 60)
    return f"{minutes}m{sec:02d}s" if minutes else f"{seconds:.1f}s"


def _link(out: Path, stage: PlannedStage) -> None:
    link = out / stage.spec.name
    tmp = out / f".{stage.spec.name}.link.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(stage.dir.name, tmp)
    if link.exists() and not link.is_symlink():
        return  # never replace a real folder a user put there
    os.replace(tmp, link)


def execute_stage(stage: PlannedStage) -> None:
    """Run one planned stage into its (existing) folder and mark it complete: the config record, then the completion
    marker last, then the resume-only folders go. Called in this process, or in a child by `--jobs`."""
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    stage.kind.run(make_config(stage), stage.dir)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    # Written after the run: several stage functions insist on an empty (or their own) output folder.
    write_json(stage.dir / STAGE_CONFIG, {"name": stage.spec.name, "kind": stage.spec.kind,
                                          "fingerprint": stage.fingerprint, "config": stage.config})
    write_json(stage.dir / COMPLETE_MARKER, {"fingerprint": stage.fingerprint, "seconds": seconds, "cpu_seconds": cpu,
                                             "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def find_kind(name: str) -> StageKind:
    """The registered kind `name` (the built-ins load on demand): how a `--jobs` child finds a kind that does not
    pickle."""
    return stage_kinds([name])[name]


def _prepare_folder(stage: PlannedStage) -> str:
    """Empty or keep the stage's folder for a run; returns its status: `ran`, `forced` or `resumed`."""
    status = "ran"
    if (stage.dir / FORCED_MARKER).exists():
        shutil.rmtree(stage.dir)
        status = "forced"
    elif stage.dir.exists() and not stage.kind.resumable:
        shutil.rmtree(stage.dir)  # a partial artifact this kind cannot resume from
    elif stage.dir.exists():
        status = "resumed"
    stage.dir.mkdir(parents=True, exist_ok=True)
    return status


def run_pipeline(
    pipe: Pipeline | str | Path,
    out: str | Path,
    force: Iterable[str] = (),
    log: Callable[[str], None] = print,
    jobs: int = 1,
) -> list[StageOutcome]:
    """Run every stage whose artifact is not complete, in order; see the module docstring for the rules. `jobs` > 1
    runs independent stages at once (`pipelines.parallel`), on the same cache."""
    if not isinstance(pipe, Pipeline):
        pipe = load_pipeline(pipe)
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    force = list(force)
    unknown = [n for n in force if n not in {s.name for s in pipe.stages}]
    if unknown:
        raise UserError(f"--force {', '.join(unknown)}: no such stage; stages: {', '.join(s.name for s in pipe.stages)}")
    out = Path(out).resolve()
    stages = plan(pipe, out)
    rerun = downstream(pipe, force)
    out.mkdir(parents=True, exist_ok=True)
    # The lock belongs to this process alone (not to the DataLoader workers a stage forks): see `distill.locks`.
    lock = ProcessLock(out / LOCK_FILE)
    if not lock.acquire():
        raise UserError(f"another `narvl-pipe run` (pid {lock.holder()}) is using {out}; "
                        "wait for it or pick another --out")
    outcomes: dict[str, StageOutcome] = {}
    with lock:
        _mark_forced(stages, rerun)
        width = max(len(s.spec.name) for s in stages)
        heads = {s.spec.name: f"[{i}/{len(stages)}] {s.spec.name:<{width}}" for i, s in enumerate(stages, 1)}
        todo, status = [], {}
        for stage in stages:
            if stage.complete:
                record = json.loads((stage.dir / COMPLETE_MARKER).read_text())
                outcomes[stage.spec.name] = StageOutcome(stage.spec.name, "skipped", stage.dir, 0.0, cached=record)
                note = _drop_resume_state(stage)  # left by a narvl-pipe that kept them
                log(f"{heads[stage.spec.name]} cached   {stage.dir.name} "
                    f"(took {format_duration(record.get('seconds', 0.0))}{note})")
                _link(out, stage)
            else:
                todo.append(stage)

        def start(stage: PlannedStage, note: str = "") -> None:
            status[stage.spec.name] = _prepare_folder(stage)
            verb = "resuming" if status[stage.spec.name] == "resumed" else "running"
            log(f"{heads[stage.spec.name]} {verb}  {stage.dir.name}" + (f" ({note})" if note else ""))

        def finish(stage: PlannedStage) -> None:
            record = json.loads((stage.dir / COMPLETE_MARKER).read_text())
            note = _drop_resume_state(stage)
            _link(out, stage)
            outcomes[stage.spec.name] = StageOutcome(stage.spec.name, status[stage.spec.name], stage.dir,
                                                     record["seconds"], record["cpu_seconds"])
            log(f"{heads[stage.spec.name]} done     in {format_duration(record['seconds'])} "
                f"(cpu {format_duration(record['cpu_seconds'])}{note})")

        if jobs > 1 and len(todo) > 1:
            deps = {s.spec.name: s.spec.deps for s in stages}
            run_parallel(todo, deps, set(outcomes), jobs, out, execute_stage, find_kind, start, finish)
        else:
            for stage in todo:
                start(stage)
                execute_stage(stage)
                finish(stage)
    return [outcomes[s.spec.name] for s in stages]
