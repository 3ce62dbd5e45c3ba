"""Issue 22's recipe points, each against the official value, the file and line cited in the test's docstring
(OFA-Sys/OFA@a36b91c, amazon-science/NARVL@1ed7fc3, read with `git show`)."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipelines"))  # --import-mode=importlib
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distill"))
import paper_data  # noqa: E402
from ofa_helpers import other_config  # noqa: E402

from distill.errors import UserError  # noqa: E402
from distill.ofa import OFAModel  # noqa: E402
from distill.sources import open_source  # noqa: E402
from distill.tasks import get_task  # noqa: E402
from student.presets import recipe_for, resolve  # noqa: E402
from student.train_setup import resolve_accumulation  # noqa: E402
from student.train_student import StudentTrainConfig  # noqa: E402
from student.train_teacher import TeacherTrainConfig, constraint_trie, teacher_loss, training_answers  # noqa: E402


def _student(task: str, **kw) -> StudentTrainConfig:
    return StudentTrainConfig(output_dir="x", task=task, data="d", init="i", **kw)


def _cli(*args):
    from typer.testing import CliRunner

    from pipelines.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


# --------------------------------------------------------------------------------------------- point 1: epochs
def test_caption_epochs_count_one_sample_per_caption(tmp_path):
    """OFA's stage-1 caption data holds one caption per line: OFA README.md line 244 ("Each image corresponds to
    only 1 caption in caption_stage1_train.tsv [...] Each line of the dataset represents a caption sample"),
    `run_scripts/caption/train_caption_stage1_base.sh` line 17 `selected_cols=0,4,2` (the per-caption uniq-id as the
    sample id) where stage 2 (`train_caption_stage2_base.sh` line 17) and evaluation (`evaluate_caption_base.sh`
    line 13) read `1,4,2` (the image id), and `data/mm_data/caption_dataset.py` line 122 `uniq_id, image, caption =
    self.dataset[index]` (one caption per sample). So `--max-epoch 5` (stage1_base.sh line 40) passes over every
    caption: a Karpathy JSON (one row per image, all its captions) counts each caption, as the TSV's lines."""
    task = get_task("caption")
    karpathy = open_source(paper_data.karpathy(tmp_path / "coco"), "train+restval", None, task)
    tsv = open_source(paper_data.caption_tsvs(tmp_path / "tsv"), "train", None, task)
    assert (len(karpathy), len(tsv)) == (4, 8)  # 4 images x 2 captions: per image vs per caption
    assert task.epoch_samples(karpathy) == task.epoch_samples(tsv) == 8
    assert get_task("vqa").epoch_samples(karpathy) == 4  # other tasks: one sample per row

    # The caption teacher (the same rule counts the student's distilled rows: tests/pipelines/test_paper_runs.py).
    init = paper_data.ofa_sys_folder(tmp_path / "ofa", seed=0)
    out = tmp_path / "teacher"
    _cli("train-teacher", "--task", "caption", "--init", init, "--data", tmp_path / "coco", "--split",
         "train+restval", "--epochs", "1", "--batch-size", "2", "--resolution", "32", "--eval-split", "val",
         "--eval-limit", "1", "--report-to", "none", "--out", out)
    record = json.loads((out / "train_config.json").read_text())
    assert record["final_step"] == 4 and record["epoch"]["samples"] == 8  # 8 captions / 2, not 4 images / 2
    assert "one sample per reference caption" in record["epoch"]["rule"]


# ------------------------------------------------------------------------------- point 4: the VQA-huge schedule
def test_vqa_huge_rate_stays_near_the_peak_as_fairseq_polynomial_decay(tmp_path):
    """NARVL's `run_scripts/vqa_nat/train_vqa_huge_6_distill_huge.sh` sets `warmup_ratio=0.00` (line 59), `lr=5e-5`
    (line 60), `--lr-scheduler=polynomial_decay` (line 97) and no `--total-num-update`. In its fairseq
    (`fairseq/fairseq/optim/lr_scheduler/polynomial_decay_schedule.py`), `total_num_update` defaults to 1000000
    (lines 36-39) and `reinit`, which sets it to the run's real length, returns at once when `warmup_ratio <= 0`
    (lines 97-99); `step_update` (lines 81-94) then gives `lr * (1 - n / 1e6)`: about 5e-5 throughout a run of some
    ten thousand updates. With warmup (VQA base, 0.04), `reinit` decays over the real length (lines 101-102)."""
    from student.train_fields import with_trainer_defaults
    from student.train_steps import make_accelerator, prepare

    def fairseq_lr(lr, n, warmup, total, end=0.0, power=1.0):  # step_update, lines 83-92
        if warmup > 0 and n <= warmup:
            return n / warmup * lr
        if n >= total:
            return end
        return (lr - end) * (1 - (n - warmup) / (total - warmup)) ** power + end

    huge, record = resolve(_student("vqa"), "student", "huge")
    assert record["source"].endswith("train_vqa_huge_6_distill_huge.sh")
    assert (huge.lr, huge.warmup_ratio, huge.lr_decay_steps) == (5e-5, 0.0, 1_000_000)
    base, _ = resolve(_student("vqa"), "student", "base")
    assert base.lr_decay_steps is None  # decays over the run, to 0
    for cfg, total in ((huge, 1_000_000), (base, None)):
        cfg = with_trainer_defaults(dataclasses.replace(cfg, output_dir=str(tmp_path), max_steps=200))
        acc = make_accelerator(cfg, tmp_path, "no", None)
        run = prepare(torch.nn.Linear(2, 2), cfg, 200, acc, None)
        lrs = []
        for _ in range(200):
            lrs.append(run.scheduler.get_last_lr()[0])
            run.optimizer.step()
            run.scheduler.step()
        if total:  # warmup 0: fairseq's first update uses the peak, then step_update(n) after update n
            assert lrs == pytest.approx([fairseq_lr(5e-5, n, 0, total) for n in range(200)], rel=1e-9)
            assert lrs[-1] > 0.9998 * 5e-5
        else:
            assert lrs[-1] < 5e-5 * 0.01  # 200 steps: decayed to ~0 at the end of the run


# ------------------------------------------------------------------------------- point 6: RefCOCO+ and RefCOCOg
# benchmark, size: (script, per-GPU batch, update_freq, GPUs, max_epoch, lr, drop-path), lines in the docstring
NARVL_REF = {
    ("refcocog", "tiny"): ("train_refcocog_tiny_5.sh", 16, 1, 8, 50, 3e-5, 0.1),
    ("refcocog", "base"): ("train_refcocog_base_5.sh", 4, 4, 8, 12, 5e-5, 0.1),
    ("refcocog", "huge"): ("train_refcocog_huge_5.sh", 2, 8, 8, 15, 3e-5, 0.1),
    ("refcoco+", "tiny"): ("train_refcocoplus_tiny_5.sh", 16, 1, 8, 50, 5e-5, 0.1),
    ("refcoco+", "base"): ("train_refcocoplus_base_5.sh", 4, 4, 8, 10, 5e-5, 0.1),
    ("refcoco+", "huge"): ("train_refcocoplus_huge_5.sh", 2, 8, 8, 10, 3e-5, 0.2),
}
OFA_REF = {
    ("refcocog", "base"): ("train_refcocog_base.sh", 4, 8, 4, 12, 5e-5, 0.1),
    ("refcocog", "large"): ("train_refcocog.sh", 4, 8, 4, 10, 3e-5, 0.2),
    ("refcoco+", "base"): ("train_refcocoplus_base.sh", 4, 8, 4, 10, 5e-5, 0.1),
    ("refcoco+", "large"): ("train_refcocoplus.sh", 4, 8, 4, 10, 3e-5, 0.2),
}


@pytest.mark.parametrize("trainer,key", [("student", k) for k in NARVL_REF] + [("teacher", k) for k in OFA_REF])
def test_refcoco_plus_and_g_have_their_own_recipes(trainer, key):
    """NARVL `run_scripts/refcoco_nat/train_refcoco{g,plus}_{tiny,base,huge}_5.sh`: GPUS_PER_NODE line 6,
    batch_size/update_freq lines 25-26 (tiny, plus_huge: 27-28), lr/max_epoch lines 22-23 (tiny, plus_huge: 24-25),
    encoder/decoder_drop_path_rate lines 28-29 (30-31); OFA `run_scripts/refcoco/train_refcoco{g,plus}{_base,}.sh`:
    batch_size/update_freq lines 26-27, drop-path lines 29-30, the `for max_epoch in {12,}` / `for lr in {5e-5,}`
    loops of lines 38-40 (refcocog base: 12 epochs), nproc_per_node=4 line 49."""
    table = NARVL_REF if trainer == "student" else OFA_REF
    script, per_gpu, update_freq, gpus, epochs, lr, drop_path = table[key]
    benchmark, size = key
    cfg = _student("grounding", benchmark=benchmark) if trainer == "student" else TeacherTrainConfig(
        output_dir="x", task="grounding", data="d", benchmark=benchmark)
    resolved, record = resolve(cfg, trainer, size)
    assert record["source"].endswith("/" + script)
    assert (resolved.batch_size, resolved.per_device_batch_size) == (per_gpu * update_freq * gpus, per_gpu)
    assert (resolved.epochs, resolved.lr, resolved.drop_path, resolved.warmup_ratio) == (epochs, lr, drop_path, 0.06)
    assert resolved.freeze_embeddings is False and resolve_accumulation(resolved, gpus) == (update_freq, per_gpu)
    # RefCOCO itself keeps its own (train_refcoco_base_5.sh: 10 epochs), and a wrong name is one line.
    assert recipe_for(trainer, "grounding", "base", "refcoco").epochs == 10
    with pytest.raises(UserError, match="`benchmark` 'refcocoz': task grounding has official recipes for refcoco"):
        recipe_for(trainer, "grounding", "base", "refcocoz")


# ------------------------------------------------------------------------------- point 9: drop-worst, answers
def test_caption_teacher_recipe_and_criterion_drop_the_worst_tokens():
    """OFA `run_scripts/caption/train_caption_stage1_base.sh`: `drop_worst_ratio=0.2` (line 38), `for
    drop_worst_after in 6000` (line 44); `train_caption_stage1.sh` (large): 2500 (line 44). The criterion,
    `criterions/label_smoothed_cross_entropy.py` lines 101-116: per target token `(1 - eps - eps_i) * nll + eps_i *
    smooth`, then `if drop_worst_ratio > 0 and update_num > drop_worst_after: loss, indices = torch.topk(loss,
    k=int(loss.shape[0] * (1 - drop_worst_ratio)), largest=False)`, summed and divided by the kept tokens
    (`ntokens = loss.numel()` -> sample_size). `update_num` is fairseq's count of updates done."""
    for size, after in (("base", 6000), ("large", 2500)):
        resolved, _ = resolve(TeacherTrainConfig(output_dir="x", task="caption", data="d"), "teacher", size)
        assert (resolved.drop_worst_ratio, resolved.drop_worst_after) == (0.2, after)
    vqa, _ = resolve(TeacherTrainConfig(output_dir="x", task="vqa", data="d"), "teacher", "base")
    assert vqa.drop_worst_ratio is None  # the VQA script sets none: off

    torch.manual_seed(0)
    model = OFAModel(other_config(vocab_size=60)).eval()
    labels = torch.tensor([[5, 9, 11, 2, -100], [7, 7, 3, 8, 2]])
    batch = {"input_ids": torch.randint(4, 60, (2, 6)), "patch_images": torch.randn(2, 3, 32, 32),
             "patch_masks": torch.ones(2, dtype=torch.bool), "labels": labels,
             "decoder_input_ids": torch.tensor([[0, 5, 9, 11, 1], [0, 7, 7, 3, 8]])}
    eps, ratio, after = 0.1, 0.2, 3
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], patch_images=batch["patch_images"],
                       patch_masks=batch["patch_masks"], decoder_input_ids=batch["decoder_input_ids"]).logits
        lprobs = F.log_softmax(logits.float(), -1)[labels != -100]  # OFA: lprobs[target != padding_idx]
        target = labels[labels != -100]
        eps_i = eps / (lprobs.size(-1) - 1)
        official = (1 - eps - eps_i) * -lprobs.gather(-1, target[:, None]).squeeze(-1) + eps_i * -lprobs.sum(-1)
        fn = teacher_loss(eps, ratio, after)
        for step in (after + 1, after + 2):  # optimizer step s follows s - 1 updates: dropping from s = after + 2
            loss, _ = fn(model, batch, step)
            kept = official if step - 1 <= after else official.topk(int(official.numel() * (1 - ratio)),
                                                                     largest=False).values
            assert loss.item() == pytest.approx((kept.sum() / kept.numel()).item(), rel=1e-5)
        assert int(official.numel() * (1 - ratio)) == 7  # 9 tokens: the 2 worst are left out


def test_teacher_vqa_trie_comes_from_the_answer_list_when_given(tmp_path):
    """OFA's VQA fine-tuning constrains the loss to its trainval answer list: `run_scripts/vqa/
    train_vqa_base_distributed.sh` line 25 `ans2label_file=../../dataset/vqa_data/trainval_ans2label.pkl`, line 131
    `--ans2label-file=${ans2label_file}` ("the candidate answer set shall be specified by --ans2label-file", line
    65), which `tasks/mm_tasks/vqa_gen.py` lines 99-100 load (`pickle.load`) into the constraint trie. Given `answers`, train-teacher uses that list (in
    the pickle's label order), not only the answers of the training rows; without it, the rows' answers."""
    files = paper_data.vqa_tsvs(tmp_path / "vqa")
    task = get_task("vqa")
    ds = open_source(files["train"], "train", None, task)
    cfg = TeacherTrainConfig(output_dir="x", task="vqa", data=str(files["train"]), answers=str(files["answers"]))
    listed = training_answers(cfg, {"vqa": ds})["vqa"]
    assert listed == paper_data.ANSWERS  # the file, label order
    from_rows = training_answers(dataclasses.replace(cfg, answers=None), {"vqa": ds})["vqa"]
    assert set(from_rows) < set(listed)  # the rows hold fewer answers than OFA's list
    tok = load_tok(tmp_path)
    missing = next(a for a in listed if a not in from_rows)
    first = tok(" " + missing, add_special_tokens=False)["input_ids"][0]
    assert first in constraint_trie(listed, tok).next_tokens([])
    with pytest.raises(UserError, match="`answers` applies to the tasks that decode over an answer list"):
        training_answers(dataclasses.replace(cfg, task="caption"), {"caption": ds})


def load_tok(tmp_path):
    from distill.ofa.tokenization_ofa import load_ofa_tokenizer

    return load_ofa_tokenizer(paper_data.ofa_sys_folder(tmp_path / "tok", seed=0))
