"""The repeated NAME=VALUE options (`--set`, `--override`, `--field`, `--column`) share one parser."""
from __future__ import annotations

import pytest

from distill.errors import UserError
from pipelines.options import parse_columns, parse_fields
from pipelines.variables import parse_overrides, parse_sets


def test_values_parse_as_each_option_says():
    assert parse_sets(["COCO_ROOT= /data/coco ", "EMPTY="]) == {"COCO_ROOT": "/data/coco", "EMPTY": ""}
    assert parse_overrides(["student.max_steps=4", "eval.latency_batch_sizes=[1, 8]", "student.init=a=b"]) == {
        ("student", "max_steps"): 4, ("eval", "latency_batch_sizes"): [1, 8], ("student", "init"): "a=b"}
    assert parse_fields(["premise=  two shapes "]) == {"premise": "  two shapes "}  # text is kept as typed
    assert parse_columns(["captions = text"]) == {"captions": "text"}


@pytest.mark.parametrize("parse, item, message", [
    (parse_sets, "COCO_ROOT", "--set 'COCO_ROOT': expected NAME=VALUE, e.g. --set COCO_ROOT=/data/coco"),
    (parse_overrides, "max_steps=4", "--override max_steps='4': expected STAGE.FIELD=VALUE"),
    (parse_overrides, "=4", "--override '=4': expected STAGE.FIELD=VALUE"),
    (parse_fields, "premise", "`fields` 'premise': expected name=value"),
    (parse_columns, "captions=", "`columns` 'captions=': expected canonical=source, e.g. captions=text"),
])
def test_a_malformed_item_is_a_one_line_error_naming_the_option(parse, item, message):
    with pytest.raises(UserError) as err:
        parse([item])
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
