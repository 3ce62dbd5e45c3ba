"""The README's table of canonical columns is the registered tasks' (`canonical_columns`, `column_features`,
`optional_columns`): every column of every built-in task, with its type, and nothing else."""
from __future__ import annotations

import re
from pathlib import Path

from datasets import List, Value

from distill.tasks import BASE_COLUMNS, canonical_columns, get_task

README = Path(__file__).resolve().parents[2] / "README.md"
BUILT_IN = ("caption", "vqa", "grounding", "entailment")
_SCALARS = {"string": "str", "float64": "float", "float32": "float", "int64": "int", "int32": "int", "bool": "bool"}


def type_name(feature) -> str:
    """A `datasets` feature as the README writes its type: str, list[str], list[{answer: str, confidence: float}]."""
    if isinstance(feature, Value):
        return _SCALARS[feature.dtype]
    if isinstance(feature, List):
        return f"list[{type_name(feature.feature)}]"
    if isinstance(feature, dict):
        return "{" + ", ".join(f"{k}: {type_name(v)}" for k, v in feature.items()) + "}"
    raise AssertionError(f"no README spelling for {feature!r}")


def readme_rows() -> list[tuple[str, str, str]]:
    text = README.read_text(encoding="utf-8").split("### Your own data: the canonical columns", 1)[1]
    table = text.split("\n\n", 3)[2]  # the paragraph, then the table
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    return [(task, column, kind) for task, column, kind, _example in rows]


def test_readme_table_is_the_registered_columns():
    expected = [("all", f"`{c}`", {"id": "str", "image": "image"}[c]) for c in BASE_COLUMNS]
    for name in BUILT_IN:
        task = get_task(name)
        features = task.column_features()
        for col in task.canonical_columns():
            if col in BASE_COLUMNS:
                continue
            label = f"`{col}`" + (" (optional)" if col in task.optional_columns else "")
            expected.append((name, label, type_name(features[col])))
    assert readme_rows() == expected
    documented = {re.sub(r"[` ]|\(optional\)", "", c) for _, c, _ in readme_rows()}
    assert documented == set(canonical_columns())  # what `--column canonical=source` accepts
