"""Read a pickle as data, never running code: OFA's `trainval_ans2label.pkl`, RefCOCO's `refs(unc).p`.

A pickle names callables (module + name) that loading calls; this unpickler resolves none but an allow-list of
stand-ins for what numpy's scalar pickles reference, so a file may hold builtin containers and scalars (dict, list,
tuple, str, bytes, int, float, bool, None) and numpy scalars (returned as Python numbers), and nothing else.

Python 2 pickles (lichengunc/refer's refs files) hold Python 2 `str` as bytes: they are loaded with
`encoding="bytes"` and every bytes value (dict keys included) is decoded as UTF-8, else Latin-1.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from distill.errors import UserError

_NUMERIC_KINDS = "biuf"
"""numpy dtype kinds a scalar may have: bool, signed and unsigned integer, floating point."""


def _text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)


class _DType:
    """Stands in for `numpy.dtype` while unpickling: keeps the type code and byte order, builds nothing."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = True):
        self.spec, self.order = _text(spec), "="

    def __setstate__(self, state: Any) -> None:
        # numpy's dtype state: (version, byte order, subarray, names, fields, elsize, alignment, flags)
        if isinstance(state, tuple) and len(state) > 1 and _text(state[1]) in ("<", ">", "=", "|"):
            self.order = _text(state[1])

    def numpy(self) -> np.dtype:
        dtype = np.dtype(self.spec)
        if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise pickle.UnpicklingError(f"a numpy dtype {self.spec!r}; only numeric scalars are accepted")
        return dtype.newbyteorder(self.order) if self.order in ("<", ">") else dtype


def _numpy_scalar(dtype: Any, data: Any = None) -> int | float | bool:
    """`numpy.core.multiarray.scalar(dtype, bytes)`: the number those bytes hold, as a Python number."""
    if not isinstance(dtype, _DType) or not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("a numpy scalar that is not a number stored as bytes")
    dt = dtype.numpy()
    if len(data) != dt.itemsize:
        raise pickle.UnpicklingError(f"a numpy {dt} scalar of {len(data)} bytes")
    return np.frombuffer(bytes(data), dtype=dt, count=1)[0].item()


def _latin1_bytes(text: Any, encoding: Any = "utf-8") -> bytes:
    """`_codecs.encode(text, "latin1")`: how Python 3 writes bytes in protocol 2 pickles (numpy's scalar data)."""
    if not isinstance(text, str) or _text(encoding).lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode other than text to latin-1 bytes")
    return text.encode("latin-1")


_ALLOWED = {
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,  # numpy 1.x (and Python 2) pickles
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,  # numpy 2.x pickles
    ("numpy", "dtype"): _DType,
    ("_codecs", "encode"): _latin1_bytes,
}
"""The only globals a data pickle may name, each mapped to a stand-in that builds plain data."""


class DataOnlyUnpickler(pickle.Unpickler):
    """Builds builtin containers and scalars, and numpy scalars as Python numbers; refuses every other global."""

    def find_class(self, module: str, name: str):
        found = _ALLOWED.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}; only plain data (and numpy numbers) "
                                         "is accepted")
        return found


def _plain(value: Any) -> Any:
    """Python 2 `str` (bytes here) as text, recursively; a bare numpy dtype as a dtype."""
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return bytes(value).decode("latin-1")
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, _DType):
        return value.numpy()
    return value


def load_data_pickle(path: str | Path, what: str) -> Any:
    """The data pickled in `path` (see the module docstring); `what` names the file in the one-line `UserError`
    raised for a pickle that is not plain data (or is no pickle)."""
    with open(path, "rb") as fh:
        try:
            return _plain(DataOnlyUnpickler(fh, encoding="bytes").load())
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
                KeyError) as exc:
            raise UserError(f"{what} {path}: not a data-only pickle ({exc})") from exc
