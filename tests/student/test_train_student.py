"""`narvl-pipe train-student` end to end on a tiny shapes world: a tiny teacher (real train-teacher), a real distill
run, then KD and raw training, the train-time filters, infeasible-sample counting and the saved folder."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import datasets
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # the suite runs with --import-mode=importlib
import student_helpers as h  # noqa: E402

from distill.errors import UserError  # noqa: E402
from student.data import load_training_data  # noqa: E402



@pytest.fixture(scope="module")
def world_teacher_distilled(tmp_path_factory):
    root = tmp_path_factory.mktemp("kd")
    world = h.make_world(root)
    teacher = h.make_teacher(world, root / "teacher")
    distilled = h.make_distilled(teacher, world, root / "distilled")
    return world, teacher, distilled


def _required_frames(ids: list[int]) -> int:
    """Length plus one blank per adjacent repeat, computed directly (independent of student.loss)."""
    return len(ids) + sum(a == b for a, b in zip(ids, ids[1:]))


def test_kd_student_folder_filters_and_logs(world_teacher_distilled, tmp_path):
    from distill.ofa.image_processing_ofa import OFAImageProcessor
    from distill.ofa.tokenization_ofa import load_ofa_tokenizer
    from student.modeling_narvl import NARVLModel

    world, teacher, distilled = world_teacher_distilled
    rows = load_training_data(distilled)
    logprobs = sorted(rows["teacher_logprob"])
    threshold = logprobs[len(logprobs) // 2]
    kept_lens = sorted(n for lp, n in zip(rows["teacher_logprob"], rows["target_len"]) if lp >= threshold)
    max_len = kept_lens[len(kept_lens) // 2]
    expect_lp = sum(lp < threshold for lp in rows["teacher_logprob"])
    expect_len = sum(lp >= threshold and n > max_len for lp, n in zip(rows["teacher_logprob"], rows["target_len"]))
    out = tmp_path / "student"
    res = h.cli("train-student", "--task", "caption", "--data", distilled, "--init", teacher, "--out", out,
                "--max-steps", "4", "--batch-size", "4", "--lr", "1e-3", "--num-queries", "10", "--save-every", "2",
                "--min-teacher-logprob", threshold, "--max-target-len", max_len, "--eval-limit", "4",
                "--report-to", "auto")
    assert "student caption: step 4" in res.output and "cider=" in res.output

    record = json.loads((out / "train_config.json").read_text())
    assert record["filter"] == {"total": len(rows), "removed_logprob": expect_lp, "removed_length": expect_len,
                                "kept": len(rows) - expect_lp - expect_len}
    assert record["lr"] == 1e-3 and record["num_queries"] == 10 and record["label_smoothing"] == 0.1
    assert record["eval_split"] == "validation" and "cider" in record["eval"]  # evaluated on the distill source
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all("n_infeasible" in r for r in log)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]
    assert list((out / "logs").rglob("events.out.tfevents.*"))  # tensorboard is installed here

    # One folder = a usable student: model, tokenizer and image processor load from it alone.
    model = NARVLModel.from_pretrained(str(out))
    assert model.config.num_queries == 10 and model.config.task == "caption"
    tok, proc = load_ofa_tokenizer(out), OFAImageProcessor.from_pretrained(str(out))
    assert len(tok) == len(load_ofa_tokenizer(teacher)) and proc.size == 32
    # Every weight but the queries and the blank row started from the teacher. Captioning freezes the token
    # embeddings (NARVL's --freeze-encoder/decoder-embedding): after 4 steps they, the tied output projection and
    # the blank row are exactly their initial values, while the layers and queries moved.
    from accelerate.utils import set_seed

    from distill.ofa import OFAModel

    t = OFAModel.from_pretrained(str(teacher)).state_dict()
    s = model.state_dict()
    assert set(s) - set(t) == {"query_embed.weight", "blank_row"}
    set_seed(0)  # train-student draws the new weights right after seeding
    fresh = NARVLModel.from_ofa(str(teacher), num_queries=10).state_dict()
    for key in ("encoder.embed_tokens.weight", "decoder.output_projection.weight", "blank_row"):
        assert torch.equal(s[key], fresh[key]), key
    assert not torch.equal(s["query_embed.weight"], fresh["query_embed.weight"])
    assert not torch.equal(s["encoder.layers.0.fc1.weight"], t["encoder.layers.0.fc1.weight"])
    assert record["freeze_embeddings"] is True and record["drop_path"] == 0.1 and record["lr_end"] == 0.0
    assert record["recipe"]["source"].endswith("caption_nat/train_caption_stage1_huge_distill_from_huge_20.sh")
    assert record["grad_accum"] == 2 and record["per_device_batch_size"] == 2  # batch 4 = 1 process x 2 x 2
    assert record["mixed_precision"] == "no"  # CPU
    assert model.config.encoder_drop_path_rate == 0.1 and model.config.decoder_drop_path_rate == 0.1


def test_grounding_trains_the_embeddings(world_teacher_distilled, tmp_path):
    """RefCOCO's script trains the token embeddings: they move (and with them the tied output projection)."""
    from safetensors.torch import load_file

    world, teacher, _ = world_teacher_distilled
    out = tmp_path / "grounding"
    h.cli("train-student", "--task", "grounding", "--data", world, "--target-column", "references", "--init",
          teacher, "--out", out, "--max-steps", "2", "--batch-size", "4", "--lr", "1e-3", "--eval-limit", "2",
          "--report-to", "none")
    record = json.loads((out / "train_config.json").read_text())
    assert record["freeze_embeddings"] is False and record["ema_decay"] is None
    s, t = load_file(out / "model.safetensors"), load_file(teacher / "model.safetensors")
    key = "encoder.embed_tokens.weight"
    assert not torch.equal(s[key], t[key])


def test_vqa_keeps_and_saves_the_ema(world_teacher_distilled, tmp_path):
    """VQA's script keeps an fp32 EMA (decay 0.9999) that is evaluated and saved as the model: with a decay of
    0.5 the saved weights equal the average computed from the per-step checkpoints' raw weights."""
    from safetensors.torch import load_file

    world, teacher, _ = world_teacher_distilled
    out = tmp_path / "vqa"
    args = ["train-student", "--task", "vqa", "--data", world, "--target-column", "references", "--init", teacher,
            "--max-steps", "2", "--batch-size", "4", "--lr", "1e-2", "--eval-limit", "2", "--report-to", "none",
            "--train-embeddings", "--save-every", "1", "--keep-checkpoints", "3"]
    h.cli(*args, "--out", out, "--ema-decay", "0.5")
    record = json.loads((out / "train_config.json").read_text())
    assert record["ema_decay"] == 0.5
    assert record["recipe"]["source"].endswith("vqa_nat/train_vqa_base_6.sh")
    saved = load_file(out / "model.safetensors")
    raw = [load_file(out / "checkpoints" / f"step_{i:08d}" / "model.safetensors") for i in (1, 2)]
    from accelerate.utils import set_seed
    from student.modeling_narvl import NARVLModel

    set_seed(0)
    init = NARVLModel.from_ofa(str(teacher), num_queries=6).state_dict()
    for key in ("encoder.layers.0.fc1.weight", "query_embed.weight", "blank_row"):
        expected = 0.5 * (0.5 * init[key] + 0.5 * raw[0][key]) + 0.5 * raw[1][key]
        torch.testing.assert_close(saved[key], expected, rtol=0, atol=1e-6)
        assert not torch.equal(saved[key], raw[1][key])
    # The average is checkpointed with the run: resuming after step 1 ends with the same saved EMA weights.
    import shutil

    resumed = tmp_path / "resumed"
    h.cli(*args, "--out", resumed, "--ema-decay", "0.5")
    shutil.rmtree(resumed / "checkpoints" / "step_00000002")
    (resumed / "model.safetensors").unlink()
    h.cli(*args, "--out", resumed, "--ema-decay", "0.5", "--resume")
    again = load_file(resumed / "model.safetensors")
    assert max((again[k] - saved[k]).abs().max().item() for k in saved) <= 1e-6
    # The default VQA recipe turns it on at 0.9999.
    from student.presets import recipe_for

    assert recipe_for("student", "vqa", "base").ema_decay == 0.9999


def test_infeasible_targets_are_counted(world_teacher_distilled, tmp_path):
    world, teacher, distilled = world_teacher_distilled
    from distill.ofa.tokenization_ofa import load_ofa_tokenizer
    from distill.tasks import get_task

    # The barely trained teacher emits max-length targets: give them varied lengths and some adjacent repeats (a
    # caption student learns the `target` text, re-encoded: `CaptionTask.student_target`).
    words = ["red", "circle", "blue", "square", "green", "triangle"]

    def vary(row, i):
        text = [words[(i + k) % 6] for k in range(1 + i % 6)]
        if i % 3 == 0 and len(text) >= 2:
            text[1] = text[0]
        return {"target": " ".join(text)}

    rows = load_training_data(distilled).map(vary, with_indices=True)
    rows.save_to_disk(str(tmp_path / "varied"))
    n_queries = 4
    tok, task = load_ofa_tokenizer(teacher), get_task("caption")
    expected = sum(_required_frames(task.student_target(r, tok)) > n_queries for r in rows)
    assert 0 < expected < len(rows)
    out = tmp_path / "student"
    # One step whose global batch is the whole set: every row is seen exactly once.
    h.cli("train-student", "--task", "caption", "--data", tmp_path / "varied", "--init", teacher, "--out", out,
          "--max-steps", "1", "--batch-size", len(rows), "--num-queries", n_queries, "--eval-data", world,
          "--eval-limit", "2", "--report-to", "none")
    log = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert log["n_infeasible"] == expected and log["n_samples"] == len(rows)
    assert json.loads((out / "train_config.json").read_text())["n_infeasible_total"] == expected


def test_raw_references_are_seeded_and_multimodal(world_teacher_distilled, tmp_path):
    from distill.ofa import OFAProcessor
    from distill.ofa.image_processing_ofa import OFAImageProcessor
    from distill.tasks import get_task
    from distill.tasks.base import clean_caption
    from distill.ofa.tokenization_ofa import load_ofa_tokenizer
    from student.data import TaskRows, load_training_data

    world, teacher, _ = world_teacher_distilled
    task, tok = get_task("caption"), load_ofa_tokenizer(teacher)
    ds = load_training_data(world, "train", task)
    rows = TaskRows(ds, task, OFAProcessor(OFAImageProcessor(size=32), tok), target_column="references", seed=3)
    refs = {tuple(task.encode_target(clean_caption(c, 20), tok)) for c in ds[0]["captions"]}
    drawn = [tuple(rows.example(0, d)["target"]) for d in range(30)]
    assert drawn == [tuple(rows.example(0, d)["target"]) for d in range(30)]  # same draw, same reference
    assert set(drawn) <= refs and len(set(drawn)) > 1  # several phrasings over draws: multimodal raw targets
    with pytest.raises(UserError, match="needs a distilled dataset"):
        TaskRows(ds, task, OFAProcessor(OFAImageProcessor(size=32), tok), target_column="target")
    # Raw training straight from the canonical world (the "student-raw" baseline).
    out = tmp_path / "raw"
    h.cli("train-student", "--task", "caption", "--data", world, "--init", teacher, "--out", out,
          "--target-column", "references", "--max-steps", "2", "--batch-size", "4", "--eval-limit", "2",
          "--report-to", "none")
    assert json.loads((out / "train_config.json").read_text())["target_column"] == "references"


@pytest.mark.slow
def test_two_processes_match_one_on_the_real_student(world_teacher_distilled, tmp_path):
    """Same global batch 8 in micro-batches of 4: 1 process x 2 accumulation steps vs `torchrun --nproc_per_node 2`
    (DDP, gloo; the accumulation is derived there: 8 / (2 x 4) = 1).

    Tolerance 1e-5 on every logged loss and on every parameter; dropout 0 (per-rank masks differ by design).
    BatchNorm running statistics are not compared: DDP broadcasts rank 0's, a single process sees both halves.
    """
    import os
    import subprocess

    from safetensors.torch import load_file

    _, teacher, distilled = world_teacher_distilled
    args = ["train-student", "--task", "caption", "--data", str(distilled), "--init", str(teacher),
            "--max-steps", "3", "--batch-size", "8", "--lr", "1e-3", "--num-queries", "10", "--dropout", "0",
            "--drop-path", "0", "--per-device-batch-size", "4", "--eval-every", "2", "--eval-limit", "3", "--report-to", "none"]
    h.cli(*args, "--out", tmp_path / "one", "--grad-accum", "2")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "pipelines.cli", *args, "--out", str(tmp_path / "two")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = [[json.loads(x) for x in (tmp_path / d / "log.jsonl").read_text().splitlines()] for d in ("one", "two")]
    assert [r["step"] for r in logs[1]] == [1, 2, 3]  # one writer: the main process
    loss_diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(*logs))
    assert loss_diff <= 1e-5
    assert logs[0][1]["eval/cider"] == pytest.approx(logs[1][1]["eval/cider"])  # sharded + gathered evaluation
    w1, w2 = (load_file(tmp_path / d / "model.safetensors") for d in ("one", "two"))
    params = [k for k in w1 if "running_" not in k and "num_batches_tracked" not in k]
    weight_diff = max((w1[k] - w2[k]).abs().max().item() for k in params)
    print(f"real student, 1 vs 2 processes: max loss diff {loss_diff:.3g}, max parameter diff {weight_diff:.3g}")
    assert weight_diff <= 1e-5


# ---------------------------------------------------------------------------------------------------- bad inputs
def test_unusable_rows_are_skipped_counted_and_resume_exactly(world_teacher_distilled, tmp_path):
    """One empty reference and one undecodable image among raw-reference rows: each is replaced by the next usable
    row (so batches keep their size), recorded once in skipped.jsonl, counted in train_config.json (and left out of
    the evaluation on the same rows), and a resumed run ends with the same weights and the same records as an
    uninterrupted one."""
    from distill.ofa import OFAProcessor
    from distill.ofa.image_processing_ofa import OFAImageProcessor
    from distill.tasks import get_task
    from distill.ofa.tokenization_ofa import load_ofa_tokenizer
    from student.data import SkipLog, TaskRows, load_training_data

    world, teacher, _ = world_teacher_distilled
    rows = datasets.load_from_disk(str(world))["train"].select(range(8)).cast_column(
        "image", datasets.Image(decode=False))

    def spoil(r, i):
        return {"captions": [] if i == 3 else r["captions"],
                "image": {"bytes": b"not an image" if i == 5 else r["image"]["bytes"], "path": None}}

    spoiled = rows.map(spoil, with_indices=True)
    datasets.DatasetDict({"train": spoiled, "validation": spoiled}).save_to_disk(str(tmp_path / "bad"))
    task, tok = get_task("caption"), load_ofa_tokenizer(teacher)
    ds = load_training_data(tmp_path / "bad", "train", task)
    log = SkipLog()
    trows = TaskRows(ds, task, OFAProcessor(OFAImageProcessor(size=32), tok), "references", seed=0, skips=log)
    for bad, sub in ((3, 4), (5, 6)):
        got, want = trows.example(bad, 11), trows.example(sub, 11)
        assert got["target"] == want["target"] and (got["pixels"] == want["pixels"]).all()
    assert [(r["id"], r["index"]) for r in log.records()] == [(ds[3]["id"], 3), (ds[5]["id"], 5)]
    assert "no reference caption" in log.records()[0]["reason"] and "cannot decode" in log.records()[1]["reason"]

    common = ["--task", "caption", "--data", tmp_path / "bad", "--init", teacher, "--target-column", "references",
              "--max-steps", "4", "--batch-size", "4", "--lr", "1e-3", "--save-every", "2", "--report-to", "none"]
    ref, resumed = tmp_path / "ref", tmp_path / "resumed"
    out = h.cli("train-student", "--out", ref, *common)  # 16 draws over 8 rows: both bad rows are met
    assert f"2 unusable training rows skipped (unreadable image or no reference), reasons in {ref}" in out.output
    record = json.loads((ref / "train_config.json").read_text())
    assert record["skipped_rows"] == 2 and record["eval"]["skipped_rows"] == 2  # the evaluation skips them too
    expected = (ref / "skipped.jsonl").read_text()
    assert [json.loads(x)["index"] for x in expected.splitlines()] == [3, 5]

    assert h.interrupted_then_resumed("train-student", ref, resumed, *common) <= 1e-6
    assert (resumed / "skipped.jsonl").read_text() == expected

    nothing = TaskRows(ds.select([3, 5]), task, OFAProcessor(OFAImageProcessor(size=32), tok), "references")
    with pytest.raises(UserError, match="no usable training row: all 2 rows were skipped; first: "):
        nothing.example(0, 0)


def test_bad_training_inputs_fail_in_one_line(world_teacher_distilled, tmp_path):
    import shutil

    world, teacher, distilled = world_teacher_distilled
    bad = tmp_path / "bad-init"
    shutil.copytree(teacher, bad)
    (bad / "model.safetensors").write_bytes((bad / "model.safetensors").read_bytes()[:2000])
    args = ["--task", "caption", "--data", distilled, "--out", tmp_path / "s", "--max-steps", "1", "--report-to", "none"]
    msg = _user_error("train-student", "--init", bad, *args)
    assert msg.startswith(f"cannot read weights file {bad / 'model.safetensors'} (") and "truncated" in msg
    empty = tmp_path / "empty"
    load_training_data(distilled).select([]).save_to_disk(str(empty))
    # With a broken init too: the data is checked first, before any weight is read.
    msg = _user_error("train-student", "--task", "caption", "--data", empty, "--init", bad, "--out", tmp_path / "e")
    assert msg == f"{empty} has no rows (an empty save_to_disk dataset): point it at a dataset with examples"


def _user_error(*args) -> str:
    """The one-line message a failing `narvl-pipe ARGS` raises (the CLI prints it as `error: ...`)."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert isinstance(result.exception, UserError), result.output
    assert "\n" not in str(result.exception)
    return str(result.exception)
