"""The learning proof (issue 4 point 7): a tiny NARVL from a tiny random OFA, trained a few hundred CPU steps with
the real trainer and Query-CTC, reproduces >= 95% of its training targets exactly after greedy CTC decoding.

Inputs are text-only prompts (no image: the ResNet stem would dominate the CPU time and proves nothing about the
loss and the decoding); each sample has its own two prompt tokens. Targets have lengths 1..7 plus EOS, and a quarter
of them start with a repeated label, which CTC can only emit with a blank in between.
"""
from __future__ import annotations

import random

import pytest
import torch

from distill.ofa import OFAConfig, OFAModel
from student.modeling_narvl import NARVLModel
from student.train_student import student_loss
from student.trainer import TrainConfig, train

VOCAB, EOS, PAD, BOS = 64, 2, 1, 0


def _dataset(n: int = 64) -> list[dict]:
    rng = random.Random(0)
    rows = []
    for i in range(n):
        target = [rng.randrange(4, VOCAB) for _ in range(rng.randint(1, 7))]
        if i % 4 == 0 and len(target) >= 2:
            target[1] = target[0]
        rows.append({"input_ids": [BOS, 4 + i // 8, 12 + i % 8, EOS], "target": target + [EOS]})
    return rows


def _collate(items: list[dict]) -> dict:
    width = max(len(x["target"]) for x in items)
    targets = torch.full((len(items), width), PAD, dtype=torch.long)
    for j, x in enumerate(items):
        targets[j, : len(x["target"])] = torch.tensor(x["target"])
    return {"input_ids": torch.tensor([x["input_ids"] for x in items]), "patch_images": None, "patch_masks": None,
            "targets": targets, "target_lengths": torch.tensor([len(x["target"]) for x in items]),
            "weights": None}


def test_tiny_narvl_memorises_its_targets(tmp_path, one_thread):
    torch.manual_seed(0)
    ofa = OFAModel(OFAConfig(
        vocab_size=VOCAB, d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, resnet_type="resnet18", dropout=0.0,
        max_position_embeddings=64))
    model = NARVLModel.from_ofa(ofa, num_queries=12)
    data = _dataset()
    cfg = TrainConfig(output_dir=str(tmp_path), max_steps=600, batch_size=16, lr=3e-3, lr_end=1e-5,
                      warmup_ratio=0.05, report_to="none")
    result = train(model, student_loss, data, cfg, collate_fn=_collate)
    assert result.history[-1]["total_n_infeasible"] == 0  # N=12 fits every target
    batch = _collate(data)
    decoded = result.model.eval().decode(batch["input_ids"])  # greedy CTC: argmax, merge repeats, drop blanks, cut EOS
    exact = sum(pred == row["target"][:-1] for pred, row in zip(decoded, data)) / len(data)
    print(f"learning proof: exact match {exact:.3f} after {cfg.max_steps} steps, last loss {result.history[-1]['loss']:.4f}")
    assert exact >= 0.95
