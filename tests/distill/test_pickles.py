"""distill.pickles: numpy numbers and Python 2 strings are read as plain data; anything that names another callable
is refused before it runs."""
from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from owner_copies import py2_pickle  # noqa: E402

from distill.errors import UserError  # noqa: E402
from distill.pickles import load_data_pickle  # noqa: E402
from distill.tasks.vqa import read_answers  # noqa: E402

NUMPY_LABELS = {"yes": np.int64(1), "no": np.int64(0), "2": np.int32(2), "red car": np.uint16(3)}


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_ans2label_with_numpy_integers_is_read(tmp_path, protocol):
    path = tmp_path / "trainval_ans2label.pkl"
    path.write_bytes(pickle.dumps(NUMPY_LABELS, protocol=protocol))
    assert b"numpy" in path.read_bytes()  # the pickle really names numpy's scalar constructor and dtype
    assert read_answers(str(path)) == ["no", "yes", "2", "red car"]  # label order, as OFA's index2ans
    data = load_data_pickle(path, "test")
    assert data == {"yes": 1, "no": 0, "2": 2, "red car": 3} and all(type(v) is int for v in data.values())


def test_numpy_1_pickles_are_read(tmp_path):
    """numpy 1.x (and Python 2's numpy) name the scalar constructor `numpy.core.multiarray.scalar`."""
    data = pickle.dumps(NUMPY_LABELS, protocol=2)
    assert data.count(b"cnumpy._core.multiarray\nscalar\n") == 1  # GLOBAL opcode, its module as text
    path = tmp_path / "trainval_ans2label.pkl"
    path.write_bytes(data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))
    assert read_answers(str(path)) == ["no", "yes", "2", "red car"]


def test_numpy_scalars_keep_their_values_and_byte_order(tmp_path):
    values = [np.float32(0.25), np.float64(-1e300), np.bool_(True), np.int8(-7), np.uint64(2**63 + 5),
              np.dtype(">i4").type(123456)]
    path = tmp_path / "v.pkl"
    path.write_bytes(pickle.dumps(values, protocol=2))
    assert load_data_pickle(path, "test") == [0.25, -1e300, True, -7, 2**63 + 5, 123456]
    path.write_bytes(pickle.dumps(np.dtype("float16"), protocol=4))
    assert load_data_pickle(path, "test") == np.dtype("float16")


def test_python2_strings_become_text(tmp_path):
    path = tmp_path / "py2.p"
    path.write_bytes(py2_pickle([{"sent": "café", "ref_id": 3}]))
    assert b"U\x05caf\xc3\xa9" in path.read_bytes()  # a Python 2 str: SHORT_BINSTRING of UTF-8 bytes
    assert load_data_pickle(path, "refs") == [{"sent": "café", "ref_id": 3}]


class _System:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


class _ObjectScalar:
    def __reduce__(self):  # numpy's own scalar constructor with an object dtype: could wrap any object
        return (np._core.multiarray.scalar, (np.dtype("O"), b"\0" * 8))


def test_anything_but_numbers_is_refused(tmp_path):
    cases = {"system.pkl": pickle.dumps({"yes": _System()}),
             "eval.pkl": pickle.dumps({"yes": np.int64(1), "no": _System()}, protocol=2),
             "object_scalar.pkl": pickle.dumps([_ObjectScalar()], protocol=2),
             "codecs.pkl": b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R."}
    reasons = {"system.pkl": r"it refers to (posix|os)\.system", "eval.pkl": r"it refers to (posix|os)\.system",
               "object_scalar.pkl": "only numeric scalars", "codecs.pkl": "other than text to latin-1 bytes"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError, match=rf"^`answers` .*{name}: not a data-only pickle \(.*{reasons[name]}"):
            read_answers(str(tmp_path / name))
