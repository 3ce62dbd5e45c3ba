"""Teacher folders `HFTeacher` cannot use: one line naming what is wrong, before any weights load."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # the suite runs with --import-mode=importlib
import tiny_hf  # noqa: E402

from distill.config import DistillConfig  # noqa: E402
from distill.errors import UserError  # noqa: E402
from distill.teachers.hf import HFTeacher  # noqa: E402


@pytest.fixture(scope="module")
def florence(tmp_path_factory):
    return tiny_hf.build_florence2(tmp_path_factory.mktemp("bad") / "florence2")


def _load(folder: Path, **config):
    cfg = DistillConfig(task="caption", teacher=str(folder), data="unused", out="unused", **config)
    return HFTeacher.from_pretrained(folder, {"id": str(folder)}, cfg, torch.device("cpu"))


def test_a_folder_without_config(tmp_path):
    with pytest.raises(UserError, match="has no config.json"):
        _load(tmp_path)


def test_a_model_type_that_cannot_generate(florence, tmp_path):
    folder = shutil.copytree(florence, tmp_path / "clip")
    (folder / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(UserError, match="model_type 'clip' is not an image-text model"):
        _load(folder)


def test_a_folder_without_its_image_processor(florence, tmp_path):
    folder = shutil.copytree(florence, tmp_path / "tokenizer-only")
    (folder / "processor_config.json").unlink()
    with pytest.raises(UserError, match="AutoProcessor cannot load its processor \\(Can't load image processor"):
        _load(folder)


def test_a_bad_prompt_template_names_the_field(florence):
    with pytest.raises(UserError, match="`prompt_template` '{answer}' uses \\['answer'\\]"):
        _load(florence, prompt_template="{answer}")


def test_truncated_weights_name_the_file(florence, tmp_path):
    folder = shutil.copytree(florence, tmp_path / "truncated")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    teacher = _load(folder)  # config and processor only: the weights are read at load()
    with pytest.raises(UserError, match="model.safetensors"):
        teacher.load()
