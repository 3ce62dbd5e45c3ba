"""The VQA candidate list: OFA's trainval_ans2label.pkl read safely, text/JSON lists, and no silent fallback."""
import json
import os
import pickle

import pytest

from distill.errors import UserError
from distill.tasks.vqa import read_answers
from distill.tasks import get_task


def test_ofa_ans2label_pickle_is_read_in_label_order(tmp_path):
    ans2label = {"yes": 1, "no": 0, "2": 2, "red car": 3}  # what OFA pickles: answer -> label
    (tmp_path / "trainval_ans2label.pkl").write_bytes(pickle.dumps(ans2label))
    assert read_answers(str(tmp_path / "trainval_ans2label.pkl")) == ["no", "yes", "2", "red car"]  # index2ans order
    (tmp_path / "a.json").write_text(json.dumps(["b", "a"]))
    assert read_answers(str(tmp_path / "a.json")) == ["b", "a"]
    (tmp_path / "a.txt").write_text("red\n\nblue car\n")
    assert read_answers(str(tmp_path / "a.txt")) == ["red", "blue car"]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_pickle_that_imports_anything_is_refused(tmp_path):
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps({"yes": _Evil()}))
    with pytest.raises(UserError, match=r"not a data-only pickle .*posix\.system|not a data-only pickle .*os\.system"):
        read_answers(str(bad))
    (tmp_path / "set.pkl").write_bytes(pickle.dumps({"yes": "one"}))
    with pytest.raises(UserError, match="integer label"):
        read_answers(str(tmp_path / "set.pkl"))


def test_vqa_without_answers_fails_saying_where_the_list_comes_from():
    with pytest.raises(UserError, match=r"^`task` vqa needs `answers` FILE: .*trainval_ans2label\.pkl"):
        get_task("vqa").answer_list(None)
    assert get_task("caption").answer_list(None) is None
    with pytest.raises(UserError, match="^`answers` applies to the tasks that decode over an answer list, not to caption$"):
        get_task("caption").answer_list("x.txt")
