"""`open_source` takes each task's columns from its `Task` (issue 19 point 5): a list column given as one string is
parsed by `Task.text_value`, for the built-in tasks and for a task registered in this file alone."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from datasets import Dataset, List, Value

sys.path.insert(0, str(Path(__file__).parent))
from distill_helpers import png_bytes  # noqa: E402

from distill.sources import open_source  # noqa: E402
from distill.tasks import TASKS, get_task, register_task  # noqa: E402
from distill.tasks.base import Task  # noqa: E402


def _parquet(tmp_path: Path, name: str, columns: dict) -> Path:
    n = len(next(iter(columns.values())))
    (tmp_path / "pics").mkdir(exist_ok=True)
    for i in range(n):
        (tmp_path / "pics" / f"{i}.png").write_bytes(png_bytes(i))
    Dataset.from_dict({"id": [f"r{i}" for i in range(n)], "image": [f"pics/{i}.png" for i in range(n)],
                       **columns}).to_parquet(str(tmp_path / name))
    return tmp_path / name


def test_builtin_list_columns_given_as_text(tmp_path):
    vqa = open_source(_parquet(tmp_path, "vqa.parquet", {
        "question": ["is it red", "what is it"], "answers": ["yes", None], "object_tags": ["car&&red car", ""]}),
        "train", None, get_task("vqa"))
    assert vqa["answers"] == [["yes"], []] and vqa["object_tags"] == [["car", "red car"], []]
    boxes = open_source(_parquet(tmp_path, "ref.parquet", {
        "region_text": ["left", "right", "none"], "box": ["1,2.5,10,12", "3 4 5 6", "n/a"]}),
        "train", None, get_task("grounding"))
    assert boxes["box"] == [[1.0, 2.5, 10.0, 12.0], [3.0, 4.0, 5.0, 6.0], None]  # unparsable: quarantined later
    assert boxes.features["box"] == List(Value("float64"))


@dataclass(frozen=True)
class PaletteTask(Task):
    """A task this file alone knows: name the colours of an image; its `colours` column may come `|`-joined."""

    name: str = "palette"
    input_columns: tuple[str, ...] = ("id", "image", "colours")
    resolution: int = 32
    num_queries: int = 4
    label_smoothing: float = 0.0
    reference_columns: ClassVar[tuple[str, ...]] = ("colours",)

    def column_features(self) -> dict[str, Any]:
        return {"colours": List(Value("string"))}

    def text_value(self, column: str, text: str | None) -> Any:
        return [c.strip() for c in (text or "").split("|") if c.strip()] if column == "colours" else text

    def prompt(self, row):
        return " what colours are in the image?"

    def reference(self, row, rng=None, tokenizer=None):
        return " ".join(row["colours"])

    def decode(self, text_or_ids, row, tokenizer=None):
        return text_or_ids

    def evaluate(self, predictions, rows):
        return {"exact": 100.0 * sum(p == self.reference(r) for p, r in zip(predictions, rows)) / max(len(rows), 1)}

    def metric_implementation(self, rows=()):
        return "exact match (test task)"


@pytest.fixture
def palette():
    register_task(PaletteTask)
    yield get_task("palette")
    TASKS.pop("palette")


def test_a_registered_task_parses_its_own_text_columns(tmp_path, palette):
    ds = open_source(_parquet(tmp_path, "p.parquet", {"colours": ["red | blue", "green"]}), "train", None, palette)
    assert ds.column_names == ["id", "image", "colours"] and ds["colours"] == [["red", "blue"], ["green"]]
