"""The resolved recipes against the official scripts' values, per task and size.

The reference tables below were typed from the scripts themselves (amazon-science/NARVL@1ed7fc3 `run_scripts/*_nat/`,
OFA-Sys/OFA@a36b91c `run_scripts/`): per-GPU `batch_size`, `update_freq`, GPUs (`nproc_per_node` x nodes),
`max_epoch` (or `total_num_updates`), `lr`, `warmup_ratio` (or `warmup_updates`), `encoder/decoder_drop_path_rate`,
`--freeze-*-embedding`, `--ema-decay`. A resolved config must reproduce each one, and the accumulation the trainer
derives on the script's GPU count must be the script's `update_freq`.
"""
from __future__ import annotations

import dataclasses

import pytest

from student.presets import ofa_size, option_help, recipe_for, resolve
from student.train_student import StudentTrainConfig
from student.train_setup import resolve_accumulation, resolve_length
from student.train_teacher import TeacherTrainConfig

# (task, size): (script, per-GPU batch, update_freq, GPUs, epochs, lr, warmup, drop-path, frozen, ema)
NARVL = {
    ("caption", "huge"): ("train_caption_stage1_huge_distill_from_huge_20.sh", 2, 8, 8, 5, 1e-5, 0.06, 0.1, True, None),
    ("vqa", "base"): ("train_vqa_base_6.sh", 4, 16, 8, 10, 5e-5, 0.04, 0.1, True, 0.9999),
    ("vqa", "huge"): ("train_vqa_huge_6_distill_huge.sh", 2, 32, 8, 10, 5e-5, 0.0, 0.1, True, 0.9999),
    ("grounding", "tiny"): ("train_refcoco_tiny_5.sh", 16, 1, 8, 50, 5e-5, 0.06, 0.1, False, None),
    ("grounding", "base"): ("train_refcoco_base_5.sh", 4, 4, 8, 10, 5e-5, 0.06, 0.1, False, None),
    ("grounding", "large"): ("train_refcoco_large_5.sh", 1, 16, 8, 10, 3e-5, 0.06, 0.2, False, None),
    ("grounding", "huge"): ("train_refcoco_huge_5.sh", 2, 8, 8, 10, 3e-5, 0.06, 0.2, False, None),
    ("entailment", "base"): ("train_snli_ve_base_3.sh", 4, 8, 8, 5, 5e-5, 0.06, 0.1, False, None),
    ("entailment", "huge"): ("train_snli_ve_huge_3.sh", 2, 16, 8, 6, 2e-5, 0.06, 0.2, False, None),
}
OFA = {
    ("caption", "base"): ("train_caption_stage1_base.sh", 8, 4, 4, 5, 1e-5, 0.06, 0.1, True, None),
    ("caption", "large"): ("train_caption_stage1.sh", 8, 4, 4, 2, 1e-5, 0.06, 0.1, True, None),
    ("vqa", "base"): ("train_vqa_base_distributed.sh", 4, 4, 32, 15, 5e-5, 0.04, 0.1, True, 0.9999),
    ("grounding", "base"): ("train_refcoco_base.sh", 4, 8, 4, 10, 5e-5, 0.06, 0.1, False, None),
    ("grounding", "large"): ("train_refcoco.sh", 4, 8, 4, 10, 3e-5, 0.06, 0.2, False, None),
    ("entailment", "base"): ("train_snli_ve_base.sh", 4, 8, 8, 5, 5e-5, 0.06, 0.1, False, None),
    ("entailment", "large"): ("train_snli_ve.sh", 4, 8, 8, 6, 2e-5, 0.06, 0.2, False, None),
}


def _student(task: str, **kw) -> StudentTrainConfig:
    return StudentTrainConfig(output_dir="x", task=task, data="d", init="i", **kw)


def _check(cfg, trainer: str, size: str, ref) -> None:
    script, per_gpu, update_freq, gpus, epochs, lr, warmup, drop_path, frozen, ema = ref
    resolved, record = resolve(cfg, trainer, size)
    assert record["source"].endswith("/" + script)
    assert resolved.batch_size == per_gpu * update_freq * gpus
    assert resolved.per_device_batch_size == per_gpu
    assert resolved.epochs == epochs and resolved.max_steps is None
    assert resolved.lr == lr and resolved.warmup_ratio == warmup
    assert resolved.drop_path == drop_path and resolved.freeze_embeddings is frozen and resolved.ema_decay == ema
    assert resolved.lr_end == 0.0 and resolved.weight_decay == 0.01  # fairseq polynomial_decay end lr, --weight-decay
    # The trainer's accumulation on the script's GPU count is the script's --update-freq.
    assert resolve_accumulation(resolved, gpus) == (update_freq, per_gpu)


@pytest.mark.parametrize("key", sorted(NARVL))
def test_student_recipe_equals_narvl_script(key):
    _check(_student(key[0]), "student", key[1], NARVL[key])


@pytest.mark.parametrize("key", sorted(OFA))
def test_teacher_recipe_equals_ofa_script(key):
    _check(TeacherTrainConfig(output_dir="x", task=key[0], data="d"), "teacher", key[1], OFA[key])


def test_ofa_vqa_large_counts_updates():
    """OFA's large VQA script: total_num_updates 40000, warmup_updates 1000, 4 x 4 x 8 GPUs x 4 workers."""
    resolved, _ = resolve(TeacherTrainConfig(output_dir="x", task="vqa", data="d"), "teacher", "large")
    assert resolved.max_steps == 40000 and resolved.epochs is None
    assert round(resolved.warmup_ratio * resolved.max_steps) == 1000
    assert resolved.batch_size == 512 and resolved.drop_path == 0.2 and resolved.ema_decay == 0.9999


@pytest.mark.parametrize("task,size,script", [
    ("caption", "base", "train_caption_stage1_huge_distill_from_huge_20.sh"),  # NARVL's only caption script
    ("vqa", "large", "train_vqa_base_6.sh"), ("grounding", "medium", "train_refcoco_base_5.sh"),
    ("entailment", None, "train_snli_ve_base_3.sh"), ("entailment", "tiny", "train_snli_ve_base_3.sh"),
])
def test_sizes_without_a_script_take_the_base_one(task, size, script):
    assert recipe_for("student", task, size).source.endswith(script)


def test_user_values_win_and_max_steps_overrides_epochs():
    cfg = _student("grounding", lr=1e-4, max_steps=7, freeze_embeddings=True, grad_accum=2, ema_decay=0)
    resolved, record = resolve(cfg, "student", "large")
    assert (resolved.lr, resolved.max_steps, resolved.freeze_embeddings, resolved.ema_decay) == (1e-4, 7, True, 0)
    assert resolved.epochs is None and resolved.per_device_batch_size is None  # derived from grad_accum instead
    assert resolved.drop_path == 0.2 and resolved.batch_size == 128
    assert "lr" not in record["filled"] and "drop_path" in record["filled"]
    assert resolve_length(resolved, 10**6) == 7
    assert resolve_accumulation(resolved, 4) == (2, 16)
    # --epochs alone: steps from the number of rows, rounded up.
    epochs, _ = resolve(_student("grounding", epochs=2), "student", "base")
    assert resolve_length(epochs, 1000) == 16  # ceil(2 * 1000 / 128)
    from distill.errors import UserError

    with pytest.raises(UserError, match="`max_steps` or a positive `epochs`"):
        resolve_length(dataclasses.replace(epochs, epochs=None), 1000)


def test_accumulation_errors_and_cap():
    from distill.errors import UserError

    cfg = dataclasses.replace(_student("grounding"), batch_size=128, per_device_batch_size=4)
    assert resolve_accumulation(cfg, 1) == (32, 4) and resolve_accumulation(cfg, 8) == (4, 4)
    small = dataclasses.replace(cfg, batch_size=4)
    assert resolve_accumulation(small, 1) == (1, 4) and resolve_accumulation(small, 2) == (1, 2)  # the cap
    with pytest.raises(UserError, match="divisible by processes \\(3\\)"):
        resolve_accumulation(cfg, 3)
    with pytest.raises(UserError, match="disagree"):
        resolve_accumulation(dataclasses.replace(cfg, grad_accum=2), 1)


def test_size_is_read_from_the_config():
    assert ofa_size({"encoder_layers": 6, "decoder_layers": 6, "d_model": 768}) == "base"
    assert ofa_size({"encoder_layers": 24, "decoder_layers": 12, "d_model": 1280}) == "huge"
    assert ofa_size({"encoder_layers": 1, "decoder_layers": 1, "d_model": 32}) is None


def test_help_lists_each_task_and_the_sizes_that_differ():
    assert option_help("student", "lr") == ("caption 1e-05; vqa 5e-05; grounding 5e-05, large/huge 3e-05; "
                                           "refcocog 5e-05, tiny/huge 3e-05; refcoco+ 5e-05, huge 3e-05; "
                                           "entailment 5e-05, huge 2e-05")
    assert option_help("student", "drop_path") == ("caption 0.1; vqa 0.1; grounding 0.1, large/huge 0.2; "
                                                  "refcocog 0.1; refcoco+ 0.1, huge 0.2; entailment 0.1, huge 0.2")
    assert "vqa 15, large 40000 steps" in option_help("teacher", "epochs")


def test_drop_path_reaches_every_layer_and_acts_in_training_only():
    """The recipe's drop-path goes to OFA's encoder and decoder layers (rates 0 .. p, linear over depth, as
    OFA/NARVL's `torch.linspace(0, rate, layers)`), and only a training forward is stochastic."""
    import torch

    from distill.ofa import OFAConfig
    from distill.ofa.layers import DropPath
    from student.configuration_narvl import NARVLConfig
    from student.modeling_narvl import NARVLModel

    ofa = OFAConfig(vocab_size=40, d_model=16, encoder_layers=3, decoder_layers=3, encoder_attention_heads=2,
                    decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, resnet_type="resnet18",
                    image_bucket_size=4, token_bucket_size=16, max_position_embeddings=32, dropout=0.0)
    torch.manual_seed(0)
    model = NARVLModel(NARVLConfig.from_ofa_config(ofa, num_queries=4, encoder_drop_path_rate=0.5,
                                                   decoder_drop_path_rate=0.5))
    for stack in (model.encoder.layers, model.decoder.layers):
        rates = [m.p for layer in stack for m in layer.modules() if isinstance(m, DropPath)]
        assert rates == pytest.approx(torch.linspace(0, 0.5, 3).tolist())
    ids = torch.randint(4, 40, (2, 6))
    model.train()
    train_a, train_b = model(ids).logits, model(ids).logits
    model.eval()
    eval_a, eval_b = model(ids).logits, model(ids).logits
    assert not torch.equal(train_a, train_b) and torch.equal(eval_a, eval_b)


def test_mixed_precision_auto_is_fp32_on_cpu_and_defers_to_accelerate_launch(monkeypatch):
    import torch

    from distill.errors import UserError
    from student.train_setup import resolve_mixed_precision

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert resolve_mixed_precision("auto", torch.device("cpu")) == "no"
    assert resolve_mixed_precision("fp16", torch.device("cpu")) == "fp16"
    if torch.cuda.is_available():  # the scripts' fp16, or bf16 where the GPU has it
        expected = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        assert resolve_mixed_precision("auto", torch.device("cuda")) == expected
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # `accelerate launch --mixed_precision bf16`
    assert resolve_mixed_precision("auto", torch.device("cpu")) is None
    with pytest.raises(UserError, match="auto, no, fp16 or bf16"):
        resolve_mixed_precision("fp8", torch.device("cpu"))


@pytest.mark.parametrize("task,queries,smoothing", [
    ("caption", 20, 0.1), ("vqa", 6, 0.1), ("grounding", 5, 0.1), ("entailment", 3, 0.0)])
def test_task_defaults_equal_the_scripts_num_queries_and_label_smoothing(task, queries, smoothing):
    """NARVL's `--num-queries` and `label_smoothing` (train_caption_stage1_huge_distill_from_huge_20.sh,
    train_vqa_base_6.sh, train_refcoco_base_5.sh, train_snli_ve_base_3.sh)."""
    from distill.tasks import get_task

    t = get_task(task)
    assert (t.num_queries, t.label_smoothing) == (queries, smoothing)
