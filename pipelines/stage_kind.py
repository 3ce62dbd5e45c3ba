"""`StageKind`: what a kind of pipeline stage is (its config dataclass and the function writing its artifact); the
built-in kinds are `pipelines.stage_kinds`, the runner and registry `pipelines.stages`."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

__all__ = ["StageKind"]


@dataclass(frozen=True)
class StageKind:
    """A kind of stage: its config dataclass and the function that writes its artifact."""

    name: str
    """The `kind:` value in a pipeline YAML."""
    config_cls: type
    """Config dataclass; the YAML `config:` mapping holds (some of) its fields."""
    run: Callable[[Any, Path], Any]
    """`run(config, artifact_dir)`: writes the artifact into `artifact_dir` (which exists)."""
    out_field: str | None = None
    """Config field that receives the artifact folder (not settable from YAML, not fingerprinted)."""
    fixed: Mapping[str, Any] = field(default_factory=dict)
    """Fields the runner always sets (e.g. `resume=True`); not settable from YAML, not fingerprinted."""
    resumable: bool = False
    """True: an interrupted folder is given back to `run` to resume. False: it is emptied first."""
    non_result: frozenset[str] = frozenset()
    """Config fields that change how the stage runs but not its artifact (workers, logging, trackers, progress bars):
    left out of the fingerprint, so changing one re-runs nothing."""
    resume_state: tuple[str, ...] = ()
    """Sub-folders of the artifact that only serve resuming an interrupted run (checkpoints): deleted once complete."""
    light: bool = False
    """True: the stage computes little (writing the data, a constant baseline, the report): with `--jobs` it runs
    beside the others without taking a share of the threads, so a training stage that starts next to it keeps all
    of its own."""
    exclusive: bool = False
    """True: with `--jobs`, the stage runs alone with every thread (it times something: sharing the CPU would
    change what it measures)."""

    def __post_init__(self):
        fields = {f.name for f in dataclasses.fields(self.config_cls)}
        unknown = sorted(set(self.non_result) - fields)
        if unknown:
            raise ValueError(f"stage kind {self.name!r}: non_result names no field of "
                             f"{self.config_cls.__name__}: {', '.join(unknown)}")
