"""Field groups that `StudentTrainConfig` and `TeacherTrainConfig` share, declared once: mixed into both (flat
attribute access, `cfg.eval_split`), and so generated once as `train-student` and `train-teacher` options.
The optimisation group is `TrainConfig` itself, with the recipe-filled `student.presets.RecipeFields`."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EvalFields", "TrainDataFields"]


@dataclass(kw_only=True)
class TrainDataFields:
    """Which rows train, and where the init comes from."""

    split: str = "train"
    """Training split, or a union such as `train+restval` (a distilled folder is one split: ignored there)."""
    limit: int | None = None
    """Train on the first N rows only."""
    init_revision: str | None = None
    """Hub revision of `init` (ignored for a local folder)."""


@dataclass(kw_only=True)
class EvalFields:
    """The evaluation during and after training (the task metric on a held-out split)."""

    eval_data: str | None = None
    """Evaluation source (default: `data`; for a student trained on a distilled dataset, the source it was distilled
    from, read in its manifest)."""
    eval_split: str = "validation"
    """Evaluation split; training goes on without evaluation, with a note, when the default source lacks it."""
    eval_limit: int | None = 200
    """Rows scored per evaluation."""
    eval_num_beams: int | None = None
    """Beam size of evaluation (default: a student's greedy CTC, the paper's setting; a teacher's task setting)."""
