"""The built-in stage kinds of pipeline YAMLs: thin adapters from a config dataclass to each stage's function.

Imported (and so registered) by `pipelines.stages.stage_kinds()`. Heavy imports stay inside the run functions.
"""
from __future__ import annotations

from pathlib import Path

from pipelines.shapes import ShapesConfig, write_shapes
from pipelines.stages import StageKind, register_stage_kind


def _run_data(config: ShapesConfig, out: Path) -> None:
    write_shapes(out, config)


register_stage_kind(StageKind("data", ShapesConfig, _run_data))
