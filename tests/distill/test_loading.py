"""distill.loading: a missing, truncated or corrupt weights file is one UserError naming the file, on every command
that loads weights (distill's teacher here; train-student, evaluate and predict in tests/student)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from distill_helpers import make_dataset, make_teacher  # noqa: E402

from distill.errors import UserError  # noqa: E402
from distill.loading import load_pretrained, unreadable_weights  # noqa: E402
from distill.ofa import OFAModel  # noqa: E402


def _damaged(teacher: Path, root: Path, kind: str) -> Path:
    folder = root / kind
    shutil.copytree(teacher, folder)
    st = folder / "model.safetensors"
    if kind == "truncated-safetensors":
        st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    elif kind == "garbage-safetensors":
        st.write_bytes(b"\x00garbage" * 8)
    elif kind == "no-weights":
        st.unlink()
    else:  # OFA-Sys checkpoints are pytorch_model.bin pickles
        state = OFAModel.from_pretrained(str(teacher)).state_dict()
        st.unlink()
        torch.save(state, folder / "pytorch_model.bin")
        data = (folder / "pytorch_model.bin").read_bytes()
        (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2] if kind == "truncated-bin" else b"")
    return folder


KINDS = ["truncated-safetensors", "garbage-safetensors", "truncated-bin", "empty-bin", "no-weights"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("loading") / "teacher")


def test_unreadable_weights_name_the_file(teacher, tmp_path):
    assert unreadable_weights(teacher) is None
    assert isinstance(load_pretrained(OFAModel, teacher), OFAModel)
    for kind in KINDS:
        folder = _damaged(teacher, tmp_path, kind)
        name = "pytorch_model.bin" if "bin" in kind else "model.safetensors"
        with pytest.raises(UserError) as err:
            load_pretrained(OFAModel, folder)
        msg = str(err.value)
        assert "\n" not in msg, msg
        if kind == "no-weights":
            assert f"{folder} has no weights file" in msg
        else:
            assert str(folder / name) in msg and "truncated or corrupt" in msg and "save the checkpoint again" in msg


def test_distill_with_a_truncated_teacher_is_one_line(teacher, tmp_path):
    from distill.run import DistillConfig, run_distill

    make_dataset(4).save_to_disk(str(tmp_path / "src"))
    bad = _damaged(teacher, tmp_path, "truncated-safetensors")
    with pytest.raises(UserError, match=r"cannot read weights file .*model\.safetensors .*truncated or corrupt"):
        run_distill(DistillConfig(task="caption", teacher=str(bad), data=str(tmp_path / "src"),
                                  out=str(tmp_path / "out"), batch_size=2, num_beams=1, max_new_tokens=4,
                                  num_workers=0, shard_size=2, progress=False))
