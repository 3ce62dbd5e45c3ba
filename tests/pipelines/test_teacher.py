"""`narvl-pipe train-teacher`: a tiny OFA built from `--arch` + overrides, OFA's label-smoothed cross-entropy,
checkpoint resume, and the saved folder."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parents[1] / "student"))  # shared builders (--import-mode=importlib)
import student_helpers as h  # noqa: E402

from distill.errors import UserError  # noqa: E402



@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return h.make_world(tmp_path_factory.mktemp("teacher"), n_train=16, n_val=4)


def test_label_smoothed_ce_is_ofa_criterion():
    """Against the formula written out: (1 - eps) * nll + eps * mean_v(-log p), averaged over non-pad tokens."""
    from pipelines.teacher import teacher_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7)
    labels = torch.tensor([[4, 5, 2], [6, 2, -100]])

    class Fixed(torch.nn.Module):
        def forward(self, **_):
            return type("Out", (), {"logits": logits})()

    batch = {"input_ids": None, "patch_images": None, "patch_masks": None, "decoder_input_ids": None, "labels": labels}
    loss, counts = teacher_loss(0.1)(Fixed(), batch)
    logp = logits.log_softmax(-1)
    terms = [0.9 * -logp[b, t, labels[b, t]] + 0.1 * -logp[b, t].mean()
             for b in range(2) for t in range(3) if labels[b, t] != -100]
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-6)
    assert counts["n_tokens"].item() == 5


def test_train_teacher_arch_overrides_and_resume(world, tmp_path):
    from distill.ofa import OFAModel
    from distill.tokenizer import load_ofa_tokenizer

    common = ["--task", "caption", "--data", world, *h.TINY_TEACHER, "--max-steps", "4", "--batch-size", "4",
              "--lr", "1e-3", "--save-every", "2", "--eval-limit", "2"]
    ref, resumed = tmp_path / "ref", tmp_path / "resumed"
    out = h.cli("train-teacher", "--out", ref, *common)
    assert "teacher caption: step 4" in out.stdout and "cider=" in out.stdout

    model = OFAModel.from_pretrained(str(ref))
    c = model.config
    assert (c.d_model, c.encoder_layers, c.decoder_layers, c.encoder_attention_heads, c.resnet_type) == \
        (32, 1, 1, 2, "resnet18")
    assert c.vocab_size == len(load_ofa_tokenizer(world / "tokenizer")) == len(load_ofa_tokenizer(ref))
    record = json.loads((ref / "train_config.json").read_text())
    assert record["label_smoothing"] == 0.1 and record["resolution"] == 32 and "cider" in record["eval"]

    # Resume: the same run interrupted after its step-2 checkpoint (the step-4 one removed) ends identically.
    h.cli("train-teacher", "--out", resumed, *common)
    shutil.rmtree(resumed / "checkpoints" / "step_00000004")
    (resumed / "model.safetensors").unlink()
    h.cli("train-teacher", "--out", resumed, *common, "--resume")
    a, b = load_file(ref / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert [json.loads(x)["step"] for x in (resumed / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_bad_teacher_options(world, tmp_path):
    from pipelines.teacher import TeacherTrainConfig, train_teacher

    base = dict(output_dir=str(tmp_path / "x"), task="caption", data=str(world), max_steps=1, report_to="none")
    with pytest.raises(UserError, match="--arch must be one of"):
        train_teacher(TeacherTrainConfig(**base, arch="gigantic"))
    with pytest.raises(UserError, match="exclusive"):
        train_teacher(TeacherTrainConfig(**base, init=str(world), arch="tiny"))
    with pytest.raises(UserError, match="divisible"):
        train_teacher(TeacherTrainConfig(**base, arch="tiny", d_model=30, heads=4))
    with pytest.raises(UserError, match="no tokenizer"):
        train_teacher(TeacherTrainConfig(**base, arch="tiny", tokenizer=str(tmp_path / "none")))
