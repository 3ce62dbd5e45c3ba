"""`narvl-pipe train-teacher`: a tiny OFA built from `--arch` + overrides, OFA's label-smoothed cross-entropy,
checkpoint resume, and the saved folder."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "student"))  # shared builders (--import-mode=importlib)
import student_helpers as h  # noqa: E402

from distill.errors import UserError  # noqa: E402



@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return h.make_world(tmp_path_factory.mktemp("teacher"), n_train=16, n_val=4)


def _ofa_label_smoothed_nll(lprobs, target, epsilon, constraint_masks=None):
    """OFA's `label_smoothed_nll_loss` (criterions/label_smoothed_cross_entropy.py), transcribed: per token."""
    target = target.unsqueeze(-1)
    nll_loss = -lprobs.gather(dim=-1, index=target).squeeze(-1)
    if constraint_masks is not None:
        smooth_loss = -lprobs.masked_fill(~constraint_masks, 0).sum(dim=-1, keepdim=True).squeeze(-1)
        eps_i = epsilon / (constraint_masks.sum(1) - 1 + 1e-6)
    else:
        smooth_loss = -lprobs.sum(dim=-1, keepdim=True).squeeze(-1)
        eps_i = epsilon / (lprobs.size(-1) - 1)
    return (1.0 - epsilon - eps_i) * nll_loss + eps_i * smooth_loss


class _FixedLogits(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, **_):
        return type("Out", (), {"logits": self.logits})()


def test_label_smoothed_ce_is_ofa_criterion():
    """Against OFA's own formula, transcribed: unconstrained, over the whole vocabulary, averaged over target
    tokens; each sample's tokens weighted by its VQA confidence as OFA's `conf` scales the log-probs."""
    from student.train_teacher import teacher_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7)
    labels = torch.tensor([[4, 5, 2], [6, 2, -100]])
    batch = {"input_ids": None, "patch_images": None, "patch_masks": None, "decoder_input_ids": None, "labels": labels}
    loss, counts = teacher_loss(0.1)(_FixedLogits(logits), batch)
    keep = labels != -100
    ref = _ofa_label_smoothed_nll(logits.log_softmax(-1)[keep], labels[keep], 0.1)
    assert loss.item() == pytest.approx(ref.mean().item(), rel=1e-6)
    assert counts["n_tokens"].item() == 5
    weights = torch.tensor([0.3, 1.0])
    loss, _ = teacher_loss(0.1)(_FixedLogits(logits), {**batch, "weights": weights})
    ref = _ofa_label_smoothed_nll((logits.log_softmax(-1) * weights[:, None, None])[keep], labels[keep], 0.1)
    assert loss.item() == pytest.approx(ref.mean().item(), rel=1e-6)


def test_constrained_loss_is_ofa_constrained_fine_tuning():
    """OFA's constrained VQA/SNLI-VE fine-tuning: the logits outside the trie's next tokens are -inf before the
    log-softmax and the smoothing is spread over the allowed tokens. `collate` places each example's allowed tokens
    after its decoder prompt; a position with one allowed token (the EOS closing an answer) costs nothing."""
    from distill.ofa.constraints import TokenTrie
    from student.data import collate
    from student.train_teacher import teacher_loss

    eos, vocab = 2, 9
    trie = TokenTrie([[5, 6, eos], [5, 7, eos], [8, eos]])
    targets = [[5, 7, eos], [8, eos]]
    items = [{"input_ids": [0, 3, 4, eos], "pixels": torch.zeros(3, 2, 2).numpy(), "target": t, "weight": 1.0,
              "decoder_prompt": p, "allowed": [trie.next_tokens(t[:i]) for i in range(len(t))]}
             for t, p in zip(targets, ([0, 3, 4], [0, 3]))]
    batch = collate(items, pad_id=1, bos_id=0)
    assert batch["labels"].tolist() == [[-100, -100, 5, 7, eos], [-100, 8, eos, -100, -100]]
    masks = torch.zeros(2, 5, vocab, dtype=torch.bool)
    for b, t, allowed in [(0, 2, [5, 8]), (0, 3, [6, 7]), (0, 4, [eos]), (1, 1, [5, 8]), (1, 2, [eos])]:
        masks[b, t, allowed] = True
    assert batch["constrained"].tolist() == masks.any(-1).tolist()
    torch.manual_seed(0)
    logits = torch.randn(2, 5, vocab)
    loss, counts = teacher_loss(0.1)(_FixedLogits(logits), batch)
    keep = batch["labels"] != -100
    lprobs = logits.masked_fill(~masks, float("-inf")).log_softmax(-1)
    ref = _ofa_label_smoothed_nll(lprobs[keep], batch["labels"][keep], 0.1, masks[keep])
    assert counts["n_tokens"].item() == 5 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(ref.mean().item(), rel=1e-5)
    assert ref[[2, 4]].abs().max() < 1e-4  # the EOS positions: only EOS allowed


def test_vqa_and_entailment_teachers_train_constrained_to_their_answers(world):
    """train-teacher builds OFA's constraint trie for VQA (the training answers) and SNLI-VE (yes/no/maybe); caption
    and grounding train over the whole vocabulary."""
    from distill.ofa.tokenization_ofa import load_ofa_tokenizer
    from distill.tasks import get_task
    from distill.tasks.base import text_target_ids
    from student.data import load_training_data
    from student.train_teacher import constraint_answers, constraint_trie

    def trie(name):
        task = get_task(name)
        return constraint_trie(constraint_answers(task, load_training_data(world, "train", task)), tok)

    tok = load_ofa_tokenizer(world / "tokenizer")
    assert trie("caption") is None and trie("grounding") is None
    ent = trie("entailment")
    assert sorted(ent.next_tokens([])) == sorted(text_target_ids(a, tok)[0] for a in ("yes", "no", "maybe"))
    ds = load_training_data(world, "train", get_task("vqa"))
    vqa = trie("vqa")
    for answers in ds["answers"]:
        ids = text_target_ids(answers[0], tok)
        assert all(ids[i] in vqa.next_tokens(ids[:i]) for i in range(len(ids)))
    assert vqa.next_tokens(text_target_ids("purple", tok)[:1]) == []


def test_train_teacher_arch_overrides_and_resume(world, tmp_path):
    from distill.ofa import OFAModel
    from distill.ofa.tokenization_ofa import load_ofa_tokenizer

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
    assert h.interrupted_then_resumed("train-teacher", ref, resumed, *common) <= 1e-6
    assert [json.loads(x)["step"] for x in (resumed / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_bad_teacher_options(world, tmp_path):
    from student.train_teacher import TeacherTrainConfig, train_teacher

    base = dict(output_dir=str(tmp_path / "x"), task="caption", data=str(world), max_steps=1, report_to="none")
    with pytest.raises(UserError, match="`arch` must be one of"):
        train_teacher(TeacherTrainConfig(**base, arch="gigantic"))
    with pytest.raises(UserError, match="exclusive"):
        train_teacher(TeacherTrainConfig(**base, init=str(world), arch="tiny"))
    with pytest.raises(UserError, match="divisible"):
        train_teacher(TeacherTrainConfig(**base, arch="tiny", d_model=30, heads=4))
    with pytest.raises(UserError, match="no tokenizer"):
        train_teacher(TeacherTrainConfig(**base, arch="tiny", tokenizer=str(tmp_path / "none")))


# ---------------------------------------------------------------------------------------------------- CPU-sane start
def test_arch_tiny_is_what_help_says():
    """`--arch tiny` is OFA-tiny (33M parameters with OFA's 59,457-token vocabulary) at its model card's 256 px,
    not the caption task's 480 (which took ~20 GB per batch of 32 on CPU)."""
    from typer.testing import CliRunner

    from distill.ofa import OFAModel
    from distill.tasks import get_task
    from pipelines.cli import app
    from student.train_teacher import TeacherTrainConfig, arch_help, build_ofa_config, default_resolution

    cfg = TeacherTrainConfig(output_dir="x", task="caption", data="x", arch="tiny")
    assert default_resolution(cfg, get_task("caption")) == 256
    assert default_resolution(TeacherTrainConfig(output_dir="x", task="caption", data="x", arch="large"),
                              get_task("caption")) == 480
    n = sum(p.numel() for p in OFAModel(build_ofa_config(cfg, 59457, 256)).parameters())
    assert round(n / 1e6) == 33
    assert arch_help().startswith("tiny (33M params, 4+4 layers, d_model 256, resnet50 stem, 256 px)")
    text = " ".join(CliRunner().invoke(app, ["train-teacher", "--help"]).output.replace("│", " ").split())
    assert "tiny (33M params, 4+4 layers, d_model 256, ResNet-50 stem, 256 px)" in text


def test_preflight_predicts_and_changes_nothing(world, tmp_path):
    """The probe's forward/backward leaves weights, BatchNorm statistics, gradients and the RNG untouched, the
    saved activations it measures grow with the batch's pixels, and a predicted peak above the available memory is
    one line."""
    from distill.ofa import OFAProcessor
    from distill.ofa.image_processing_ofa import OFAImageProcessor
    from distill.ofa import OFAModel
    from distill.tasks import get_task
    from distill.ofa.tokenization_ofa import load_ofa_tokenizer
    from student.train_teacher import TeacherTrainConfig, build_ofa_config, teacher_loss
    from student.data import TaskRows, collate
    from student.preflight import check_step_fits, estimate_step

    task, tok = get_task("caption"), load_ofa_tokenizer(world / "tokenizer")
    cfg = TeacherTrainConfig(output_dir="x", task="caption", data="x", arch="tiny", d_model=32, layers=1, heads=2,
                             resnet_type="resnet18")
    torch.manual_seed(0)
    model = OFAModel(build_ofa_config(cfg, len(tok), 64)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    per_sample = []
    for side in (32, 64):
        rows = TaskRows(_two_rows(world), task, OFAProcessor(OFAImageProcessor(size=side), tok), "references")
        batch = collate([rows[0], rows[1]], pad_id=tok.pad_token_id, bos_id=tok.bos_token_id)
        est = estimate_step(model, teacher_loss(0.1), batch, micro_batch=8, grad_accum=1)
        per_sample.append(est.per_sample_bytes)
        assert est.image_size == side and est.peak_bytes > est.peak_low_bytes > 8 * est.per_sample_bytes > 0
    # 4x the pixels: at least the extra input and stem activations (the logits, T x V, do not change)
    assert per_sample[1] - per_sample[0] > 3 * 3 * 32 * 32 * 4
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and not model.training
    assert torch.equal(torch.get_rng_state(), rng)
    est.available_bytes = est.peak_low_bytes / 2
    with pytest.raises(UserError, match=r"needs about .* GB of memory per process but .* GB is available .* lower "
                                        r"`batch_size` \(raise `grad_accum` to keep the global batch\) or `resolution`"):
        check_step_fits(est, 10)


@pytest.mark.parametrize("task_name", ["vqa", "entailment", "caption", "grounding"])
def test_teacher_is_trained_on_the_decoder_input_it_is_decoded_with(world, task_name):
    """OFA fine-tunes VQA and SNLI-VE with `--prompt-type=prev_output`: the decoder reads `<s>` + the prompt, then
    the target, and only the target is scored; caption and grounding start from `<s>`. The batched loss equals
    the cross-entropy of each row's target computed alone, on the decoder input OFA's inference builds
    (`decoder_prompts` of the encoder input, as VQA's trie beam search and entailment's scoring feed it)."""
    from distill.ofa import OFAModel, OFAProcessor
    from distill.ofa.image_processing_ofa import OFAImageProcessor
    from distill.ofa.tokenization_ofa import load_ofa_tokenizer
    from distill.tasks import get_task
    from distill.teachers.ofa_decoding import decoder_prompts
    from student.data import TaskRows, collate, load_training_data
    from student.train_teacher import TeacherTrainConfig, build_ofa_config, teacher_loss

    task, tok = get_task(task_name), load_ofa_tokenizer(world / "tokenizer")
    cfg = TeacherTrainConfig(output_dir="x", task=task_name, data="x", arch="tiny", d_model=32, layers=1, heads=2,
                             resnet_type="resnet18")
    torch.manual_seed(0)
    model = OFAModel(build_ofa_config(cfg, len(tok), 32)).eval()
    rows = TaskRows(load_training_data(world, "train", task, limit=3), task,
                    OFAProcessor(OFAImageProcessor(size=32), tok), "references")
    items = [rows[i] for i in range(3)]
    assert len({len(it["input_ids"]) for it in items}) > 1 or task_name in ("caption", "grounding")
    batch = collate(items, pad_id=tok.pad_token_id, bos_id=tok.bos_token_id)
    with torch.no_grad():
        loss, counts = teacher_loss(0.0)(model, batch)
        nll, n = 0.0, 0
        for it in items:
            ids = torch.tensor([it["input_ids"]])
            prefix = [tok.bos_token_id]
            if task_name in ("vqa", "entailment"):
                prefix += decoder_prompts(ids, tok.pad_token_id, tok.eos_token_id)[0]
                assert len(prefix) > 3  # the question / hypothesis is there
            target = list(it["target"])
            dec = torch.tensor([prefix + target[:-1]])
            logp = model(input_ids=ids, patch_images=torch.from_numpy(it["pixels"])[None],
                         patch_masks=torch.ones(1, dtype=torch.bool), decoder_input_ids=dec).logits.log_softmax(-1)
            scored = logp[0, len(prefix) - 1:]  # the positions that predict the target
            nll -= scored.gather(-1, torch.tensor(target)[:, None]).sum().item()
            n += len(target)
    assert int(counts["n_tokens"]) == n
    assert loss.item() == pytest.approx(nll / n, rel=1e-5)


def _two_rows(world):
    from distill.tasks import get_task
    from student.data import load_training_data

    return load_training_data(world, "train", get_task("caption"), limit=2)


def test_cpu_run_that_cannot_fit_fails_before_training(world, tmp_path):
    """A global batch whose activations alone exceed this machine's memory: one line before any step."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    out = tmp_path / "t"
    result = CliRunner().invoke(app, ["train-teacher", "--task", "caption", "--data", world, "--out", out,
                                      *h.TINY_TEACHER, "--resolution", "256", "--batch-size", "1000000",
                                      "--per-device-batch-size", "1000000",  # one micro-batch: no accumulation
                                      "--max-steps", "1"])
    assert isinstance(result.exception, UserError), result.output
    assert str(result.exception).startswith("this run needs about ") and "\n" not in str(result.exception)
    assert not (out / "log.jsonl").exists()


def test_corrupt_init_weights_are_one_line(world, tmp_path):
    ref = tmp_path / "ref"
    h.cli("train-teacher", "--out", ref, "--task", "caption", "--data", world, *h.TINY_TEACHER, "--max-steps", "1",
          "--batch-size", "2", "--eval-limit", "0")
    (ref / "model.safetensors").write_bytes(b"")
    from student.train_teacher import TeacherTrainConfig, train_teacher

    with pytest.raises(UserError, match=rf"cannot read weights file {ref / 'model.safetensors'} .*truncated"):
        train_teacher(TeacherTrainConfig(output_dir=str(tmp_path / "ft"), task="caption", data=str(world),
                                         init=str(ref), max_steps=1, report_to="none"))


def test_multi_task_mixture_rows_and_training(world, tmp_path):
    """`tasks`: one stream holding every row once per task (each part's own prompt and target), trained as one."""
    from datasets import load_from_disk

    from distill.ofa import OFAProcessor
    from distill.ofa.image_processing_ofa import OFAImageProcessor
    from distill.tasks import get_task
    from distill.ofa.tokenization_ofa import bin_token_ids, load_ofa_tokenizer
    from student.train_teacher import TaskMixture, TeacherTrainConfig, train_teacher
    from student.data import TaskRows

    tok = load_ofa_tokenizer(world / "tokenizer")
    proc = OFAProcessor(OFAImageProcessor(size=32), tok)
    ds = load_from_disk(str(world))["train"]
    parts = [TaskRows(ds, get_task(t), proc, target_column="references") for t in ("caption", "grounding")]
    mix = TaskMixture(parts)
    assert len(mix) == 2 * len(ds) == 32
    for i, (part, row) in enumerate([(0, 0), (0, 15), (1, 0), (1, 15)]):
        got, want = mix.example(part * 16 + row, draw=i), parts[part].example(row, draw=i)
        assert got["input_ids"] == want["input_ids"] and got["target"] == want["target"]
    bins = set(bin_token_ids(tok))
    assert not bins & set(mix.example(3, 0)["target"]) and set(mix.example(19, 0)["target"][:4]) <= bins

    out = tmp_path / "multi"
    base = dict(task="caption", data=str(world), arch="tiny", d_model=32, layers=1, heads=2, resnet_type="resnet18",
                resolution=32, max_steps=2, batch_size=8, lr=1e-3, eval_limit=2, eval_num_beams=1, report_to="none")
    train_teacher(TeacherTrainConfig(output_dir=str(out), tasks=["caption", "vqa", "grounding", "entailment"], **base))
    record = json.loads((out / "train_config.json").read_text())
    assert record["tasks"] == ["caption", "vqa", "grounding", "entailment"] and record["num_train_examples"] == 64
    assert record["label_smoothing"] == 0.1 and "cider" in record["eval"]  # entailment's 0 is not shared: OFA's 0.1

    with pytest.raises(UserError, match="must be one of tasks"):
        train_teacher(TeacherTrainConfig(output_dir=str(tmp_path / "x"), tasks=["vqa", "grounding"], **base))
    with pytest.raises(UserError, match="distinct"):
        train_teacher(TeacherTrainConfig(output_dir=str(tmp_path / "y"), tasks=["caption", "caption"], **base))
