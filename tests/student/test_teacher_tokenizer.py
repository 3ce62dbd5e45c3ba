"""`train-teacher --arch tiny` without a tokenizer trains one on the training text (student.teacher_tokenizer):
through the CLI on a tiny VQAv2 copy in its owner's files, which ship no tokenizer."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distill"))
from owner_copies import VQA_QUESTIONS, write_vqav2  # noqa: E402
from student_helpers import TINY_TEACHER, cli  # noqa: E402

from distill.ofa.tokenization_ofa import bin_token_ids, load_ofa_tokenizer  # noqa: E402
from distill.tasks import get_task  # noqa: E402


def test_arch_teacher_trains_its_tokenizer_on_the_training_text(tmp_path):
    root = write_vqav2(tmp_path / "vqa")
    out = tmp_path / "teacher"
    res = cli("train-teacher", "--task", "vqa", "--data", root, "--out", out, *TINY_TEACHER, "--max-steps", "2",
              "--batch-size", "2", "--lr", "1e-3", "--eval-limit", "2")
    assert "note: no tokenizer given: trained a byte-level BPE on the training text" in res.output
    tok = load_ofa_tokenizer(str(out))
    vqa = get_task("vqa")
    # every word of the training prompts and answers became one token; an unseen word did not
    for _, _, question, answers in VQA_QUESTIONS["train2014"]:
        prompt = vqa.prompt({"question": question})
        assert all(len(tok.tokenize(" " + w)) == 1 for w in prompt.replace("?", " ").split()), prompt
        target = " " + vqa.reference({"answers": answers})
        assert tok(target, add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids("Ġ" + target[1:])]
    assert len(tok.tokenize(" zebra")) > 1
    assert len(bin_token_ids(tok)) == 1000  # OFA's location bins, for any task
    record = json.loads((out / "train_config.json").read_text())
    assert record["tokenizer"] == f"BPE trained on the training text ({len(tok)} tokens)"
    assert json.loads((out / "config.json").read_text())["vocab_size"] >= len(tok)
    assert "vqa_accuracy" in record["eval"]  # evaluated on val2014, the CLI's default `validation`
