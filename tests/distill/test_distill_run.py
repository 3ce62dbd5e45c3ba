"""`narvl-pipe distill` end to end with a tiny real teacher: output vs a bare generate(), SIGKILL + resume with another
process count, 2 processes vs 1, quarantine, refusals, no-op re-run, every task."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from datasets import DatasetDict, Image

sys.path.insert(0, str(Path(__file__).parent))
from distill_helpers import (REPO, cli_env, load_out, make_dataset, make_teacher, rows_done,  # noqa: E402
                             without_root_override)
from tests.proc_helpers import alive, children  # noqa: E402

from distill import shards as sh  # noqa: E402
from distill.errors import UserError  # noqa: E402
from distill.ofa.fairseq_rules import generate_kwargs, sequence_generator_settings  # noqa: E402
from distill.run import DistillConfig, run_distill  # noqa: E402

N_ROWS, SHARD, BATCH = 48, 8, 4
BAD = {5: "corrupt", 17: "corrupt"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    teacher = make_teacher(root / "teacher")
    DatasetDict({"train": make_dataset(N_ROWS, "caption", bad=BAD)}).save_to_disk(str(root / "src"))
    base = DistillConfig(task="caption", teacher=str(teacher), data=str(root / "src"), out=str(root / "baseline"),
                         batch_size=BATCH, shard_size=SHARD, flush_every=BATCH, num_workers=2, progress=False)
    summary = run_distill(base)
    return {"root": root, "teacher": teacher, "src": root / "src", "base": base, "summary": summary}


def _args(w, out, *extra):
    return ["--task", "caption", "--teacher", str(w["teacher"]), "--data", str(w["src"]), "--out", str(out),
            "--batch-size", str(BATCH), "--shard-size", str(SHARD), "--flush-every", str(BATCH), *extra]


def _rows(out) -> list[dict]:
    return load_out(out).to_list()


def _stats(out) -> dict:
    """inode and mtime of every file under `out`."""
    return {str(p.relative_to(out)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in Path(out).rglob("*")
            if p.is_file()}


_rows_done = rows_done


def test_rows_match_a_bare_generate_on_the_same_batches(world):
    from distill.images import load_image
    from distill.ofa.image_processing_ofa import OFAImageProcessor
    from distill.ofa import OFAModel
    from distill.ofa.tokenization_ofa import load_ofa_tokenizer

    out, s = Path(world["base"].out), world["summary"]
    assert (s.rows, s.failures, s.shards, s.noop) == (N_ROWS - len(BAD), len(BAD), N_ROWS // SHARD, False)
    rows = _rows(out)
    src = make_dataset(N_ROWS, "caption", bad=BAD).cast_column("image", Image(decode=False))
    good = [i for i in range(N_ROWS) if i not in BAD]
    assert [r["id"] for r in rows] == [src[i]["id"] for i in good]
    bad = [json.loads(l) for l in (out / "quarantine.jsonl").read_text().splitlines()]
    assert [(b["id"], b["index"]) for b in bad] == [(src[i]["id"], i) for i in sorted(BAD)]
    # Readable, and free of PIL's "<_io.BytesIO object at 0x...>".
    assert [b["reason"] for b in bad] == [f"cannot decode image row {src[i]['id']} (embedded): unknown image format"
                                          for i in sorted(BAD)]

    model = OFAModel.from_pretrained(str(world["teacher"])).eval()
    tok = load_ofa_tokenizer(world["teacher"])
    proc = OFAImageProcessor.from_pretrained(str(world["teacher"]))
    by_id = {r["id"]: r for r in rows}
    checked = 0
    for lo in range(0, N_ROWS, BATCH):  # the same batches: BATCH rows of one shard, bad rows dropped
        idx = [i for i in range(lo, lo + BATCH) if i not in BAD]
        pix = torch.stack([torch.from_numpy(proc.process_image(load_image(src[i]["image"]))) for i in idx])
        ids = tok([" what does the image describe?"] * len(idx), return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            # OFA's caption flags under fairseq's rules (tests/distill/test_fairseq_decoding.py checks those rules)
            seqs = model.generate(input_ids=ids, patch_images=pix, **generate_kwargs(
                sequence_generator_settings(beam=5, max_len_b=16, min_len=1, no_repeat_ngram_size=3), tok))
            for k, i in enumerate(idx):
                r = by_id[src[i]["id"]]
                ref = [t for t in seqs[k, 1:].tolist() if t != tok.pad_token_id]
                assert r["target_ids"] == ref and ref[-1] == tok.eos_token_id and 0 not in ref[:1]
                assert r["target_len"] == len(ref)
                assert r["target"] == tok.decode(ref, skip_special_tokens=True).strip()
                # Independent log-prob: teacher forcing. EOS keeps its own log-prob, also where it is forced at
                # max length (16 + EOS, OFA's max_len_b 16), as in fairseq.
                dec = torch.tensor([[0] + ref[:-1]])
                logp = model(input_ids=ids[k:k + 1], patch_images=pix[k:k + 1], decoder_input_ids=dec).logits.log_softmax(-1)
                tf = logp[0, torch.arange(len(ref)), torch.tensor(ref)]
                assert r["teacher_logprob"] == pytest.approx(float(tf.sum()), abs=1e-3)
                assert r["captions"] == src[i]["captions"]
                assert r["image"]["bytes"] == src[i]["image"]["bytes"] and r["source_index"] == i
                checked += 1
    assert checked == N_ROWS - len(BAD)

    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "complete" and (m["rows"], m["failures"], m["shards"]) == (s.rows, s.failures, s.shards)
    assert m["generation"] == {"num_beams": 5, "max_new_tokens": 17, "min_new_tokens": 1, "no_repeat_ngram_size": 3,
                               "decoding": "fairseq", "num_return_sequences": 1}
    assert m["metric_implementation"].startswith("pycocoevalcap")  # named on the dataset card
    assert len(m["teacher"]["sha256"]) == 64 and m["source"]["split"] == "train" and m["source"]["ids_sha256"]
    assert m["narvl_pipe_version"] and m["wall_time_s"] > 0


def _wait_for(cond, proc, what: str, timeout: float = 120.0, stderr=None) -> None:
    t0 = time.time()
    while not cond():
        if proc is not None and proc.poll() is not None:
            text = (stderr.seek(0), stderr.read())[1] if stderr is not None else proc.stderr.read()
            raise AssertionError(f"the run ended before {what}: {text[-2000:]}")
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def test_sigkill_with_workers_then_immediate_resume_equals_uninterrupted(world, tmp_path):
    """`kill -9` of the main process while DataLoader workers run, then the same command at once: it resumes (the
    workers neither hold the lock nor outlive their parent) and the rows equal an uninterrupted run."""
    out = tmp_path / "killed"
    log = open(tmp_path / "stderr.txt", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "distill", *_args(world, out), "--num-workers", "2"],
                            cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL, stderr=log, text=True)
    try:
        _wait_for(lambda: any((out / sh.PARTS).rglob("*.parquet")) and len(children(proc.pid)) >= 2,
                  proc, "a flush inside a shard with the workers running", stderr=log)
        workers = children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = _rows_done(out)  # reads a few files: no pause worth the name
    summary = run_distill(DistillConfig(**{**world["base"].__dict__, "out": str(out)}))  # no pause: at once
    assert not summary.noop and summary.new_rows == N_ROWS - len(BAD) - done > 0
    rows = _rows(out)
    assert len({r["id"] for r in rows}) == len(rows) and rows == _rows(world["base"].out)
    _wait_for(lambda: not any(map(alive, workers)), None, "the killed run's workers to exit", timeout=30)


def test_sigkill_then_resume_on_two_processes_equals_uninterrupted(world, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "distill", *_args(world, out)], cwd=REPO,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        done = out / sh.DONE
        _wait_for(lambda: len(list(done.glob("*.json"))) >= 2 and any((out / sh.PARTS).rglob("*.parquet")), proc,
                  "a flush inside a unit after two complete ones")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert json.loads((out / sh.MANIFEST).read_text())["status"] == "running"
    assert 2 <= len(list((out / sh.DONE).glob("*.json"))) < N_ROWS // SHARD
    done = _rows_done(out)
    resumed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "pipelines.cli", "distill", *_args(world, out)],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{N_ROWS - len(BAD)} rows, {len(BAD)} quarantined" in resumed.stdout
    # Nothing done before the kill was generated again (complete units, flushed parts).
    assert json.loads((out / sh.MANIFEST).read_text())["last_run"]["new_rows"] == N_ROWS - len(BAD) - done
    assert _rows(out) == _rows(world["base"].out)
    quarantined = lambda o: [(b["id"], b["index"]) for b in map(json.loads, (Path(o) / "quarantine.jsonl").read_text().splitlines())]  # noqa: E731
    assert quarantined(out) == quarantined(world["base"].out)
    assert not (out / sh.WORK).exists()  # parts, claims and markers are gone: the shards hold the data, once


def test_two_processes_equal_one(world, tmp_path):
    out = tmp_path / "two"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "pipelines.cli", "distill", *_args(world, out)],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("distill: ") == 1  # one summary, from the main process
    assert _rows(out) == _rows(world["base"].out)
    assert json.loads((out / "manifest.json").read_text())["last_run"]["world_size"] == 2


def test_finished_run_is_a_noop_without_loading_the_model(world, monkeypatch):
    from distill.ofa import OFAModel

    before = _stats(world["base"].out)

    def boom(*a, **k):
        raise AssertionError("the model must not be loaded for a finished run")

    monkeypatch.setattr(OFAModel, "from_pretrained", boom)
    summary = run_distill(world["base"])
    assert summary.noop and summary.new_rows == 0 and summary.rows == N_ROWS - len(BAD)
    assert before and _stats(world["base"].out) == before


def _cli_main(argv, capsys) -> tuple[int, str]:
    from pipelines import cli

    old = sys.argv
    sys.argv = ["narvl-pipe", "distill", *argv]
    try:
        with pytest.raises(SystemExit) as exc:
            cli.main()
    finally:
        sys.argv = old
    return exc.value.code, capsys.readouterr().err


def test_bad_split_column_and_changed_config_fail_before_model_load(world, tmp_path, capsys):
    broken = tmp_path / "broken_teacher"  # unloadable weights: any model load would fail differently
    broken.mkdir()
    for f in world["teacher"].iterdir():
        (broken / f.name).write_bytes(f.read_bytes() if f.name != "model.safetensors" else b"garbage")
    args = ["--task", "caption", "--teacher", str(broken), "--data", str(world["src"]), "--out", str(tmp_path / "o")]
    code, err = _cli_main([*args, "--split", "trian"], capsys)
    assert code == 2 and err.strip() == f"error: split 'trian' not found in {world['src']}; available: train"
    code, err = _cli_main([*args, "--column", "captions=caption"], capsys)
    assert code == 2 and err.strip() == ("error: --column captions=caption: column 'caption' not found; "
                                         "columns: id, image, captions")
    code, err = _cli_main(["--task", "vqa", *args[2:]], capsys)
    assert code == 2 and err.strip() == "error: column 'question' missing for task vqa; columns: id, image, captions"
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    (no_tok / "config.json").write_bytes((world["teacher"] / "config.json").read_bytes())
    code, err = _cli_main(["--task", "caption", "--teacher", str(no_tok), *args[4:]], capsys)
    assert code == 2 and "has no tokenizer files" in err and err.count("\n") == 1

    base_args = _args(world, world["base"].out)
    code, err = _cli_main([*base_args, "--num-beams", "3"], capsys)
    assert code == 2 and "was made by a different run (generation:" in err and "--overwrite" in err
    code, err = _cli_main([*base_args[:2], "--teacher", str(broken), *base_args[4:]], capsys)
    assert code == 2 and "different run (teacher:" in err


def test_a_crash_before_any_row_leaves_nothing_that_blocks_the_next_run(world, tmp_path):
    """Corrupt teacher weights crash the run at model load, after the manifest was written: once the weights are
    fixed (another sha256, so another run identity), the same command runs, without --overwrite."""
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    for f in world["teacher"].iterdir():
        (teacher / f.name).write_bytes(f.read_bytes() if f.name != "model.safetensors" else b"garbage")
    cfg = DistillConfig(**{**world["base"].__dict__, "teacher": str(teacher), "out": str(tmp_path / "o"), "limit": 8})
    with pytest.raises(Exception):  # noqa: B017 (how a corrupt weights file is reported is not this test's concern)
        run_distill(cfg)
    assert json.loads((tmp_path / "o" / sh.MANIFEST).read_text())["status"] == "running"
    (teacher / "model.safetensors").write_bytes((world["teacher"] / "model.safetensors").read_bytes())
    summary = run_distill(cfg)
    assert (summary.rows, summary.failures, summary.noop) == (7, 1, False)
    assert _rows(tmp_path / "o") == [r for r in _rows(world["base"].out) if r["source_index"] < 8]


def test_out_that_is_a_file_or_read_only(world, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("x")
    code, err = _cli_main(_args(world, taken), capsys)
    assert code == 2 and err == f"error: output folder {taken} is an existing file; give a folder path (it is created if missing)\n"

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    done = tmp_path / "done"  # a complete output, made read-only: re-running the same command just succeeds
    import shutil

    shutil.copytree(world["base"].out, done)
    paths = [done, *done.rglob("*")]
    for p in paths:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        run = lambda out: subprocess.run(  # noqa: E731
            [sys.executable, "-m", "pipelines.cli", "distill", *_args(world, out)], cwd=REPO, env=cli_env(),
            capture_output=True, text=True, timeout=300, preexec_fn=without_root_override)
        res = run(ro)
        assert res.returncode == 2 and res.stderr == (f"error: output folder {ro} is not writable (Permission denied); "
                                                      "choose a writable folder or fix its permissions\n")
        res = run(done)
        assert res.returncode == 0, res.stderr[-2000:]
        assert f"distill: {N_ROWS - len(BAD)} rows, {len(BAD)} quarantined" in res.stdout and "already complete" in res.stdout
    finally:
        ro.chmod(0o755)
        for p in paths:
            p.chmod(0o755 if p.is_dir() else 0o644)


def test_overwrite_replaces_an_output_made_differently(world, tmp_path):
    cfg = DistillConfig(**{**world["base"].__dict__, "out": str(tmp_path / "o"), "limit": 8, "num_workers": 0})
    run_distill(cfg)
    changed = DistillConfig(**{**cfg.__dict__, "num_beams": 2})
    with pytest.raises(UserError, match="different run"):
        run_distill(changed)
    summary = run_distill(DistillConfig(**{**changed.__dict__, "overwrite": True}))
    assert not summary.noop and summary.rows + summary.failures == 8
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["generation"]["num_beams"] == 2


def test_vqa_answers_trie_nbest_and_empty_question(world, tmp_path):
    from distill.ofa.tokenization_ofa import load_ofa_tokenizer

    tok = load_ofa_tokenizer(world["teacher"])
    # Images as relative file paths in a `file` column (mapped with --column image=file); row 6's file is missing.
    from datasets import Dataset

    from distill_helpers import make_rows, png_bytes

    rows = make_rows(7, "vqa", bad={2: "empty"})
    (tmp_path / "pics").mkdir()
    for i, r in enumerate(rows):
        r["file"] = f"p{i}.png"
        if i != 6:
            (tmp_path / "pics" / r["file"]).write_bytes(png_bytes(i))
        del r["image"]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "vqa"))
    answers = ["red", "blue", "green", "a red circle"]
    (tmp_path / "answers.txt").write_text("\n".join(answers) + "\n")
    cfg = DistillConfig(task="vqa", teacher=str(world["teacher"]), data=str(tmp_path / "vqa"), out=str(tmp_path / "o"),
                        answers=str(tmp_path / "answers.txt"), num_return_sequences=3, batch_size=3, shard_size=3,
                        num_workers=0, progress=False, images=False, columns={"image": "file"},
                        image_root=str(tmp_path / "pics"))
    summary = run_distill(cfg)
    assert (summary.rows, summary.failures) == (5, 2)
    bad = [json.loads(line) for line in (tmp_path / "o" / "quarantine.jsonl").read_text().splitlines()]
    assert (bad[0]["id"], bad[0]["reason"]) == ("img0002", "empty question")
    assert bad[1]["id"] == "img0006" and "image file not found" in bad[1]["reason"] and "p6.png" in bad[1]["reason"]
    ds = load_out(tmp_path / "o")
    assert "image" not in ds.column_names and ds[0]["source_index"] == 0
    assert ds[0]["image_path"] == "p0.png"  # --no-images: a reference to the image, relative to --image-root
    for r in ds:
        assert r["target"] in answers and r["prompt"] == f" {r['question']}?"
        assert [n["text"] for n in r["nbest"]][0] == r["target"] and len(r["nbest"]) == 3
        assert len({n["text"] for n in r["nbest"]}) == 3 and all(n["text"] in answers for n in r["nbest"])
        # OFA's --unnormalized VQA beam search: ranked by the summed (trie-renormalised) log-prob itself
        scores = [n["logprob"] for n in r["nbest"]]
        assert scores == sorted(scores, reverse=True) and all(s <= 0 for s in scores)
        assert r["target_ids"] == tok(" " + r["target"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert r["nbest"][0]["logprob"] == pytest.approx(r["teacher_logprob"])


def test_grounding_and_entailment(world, tmp_path):
    from distill.ofa.tokenization_ofa import bin_token_ids, load_ofa_tokenizer

    tok = load_ofa_tokenizer(world["teacher"])
    for task in ("grounding", "entailment"):
        make_dataset(4, task).save_to_disk(str(tmp_path / task))
        run_distill(DistillConfig(task=task, teacher=str(world["teacher"]), data=str(tmp_path / task), batch_size=2,
                                  out=str(tmp_path / f"o_{task}"), shard_size=2, num_workers=0, progress=False,
                                  num_return_sequences=2))
    g = load_out(tmp_path / "o_grounding")
    for r in g:
        assert len(r["target_ids"]) == 5 and set(r["target_ids"][:4]) <= set(bin_token_ids(tok))
        assert r["target_ids"][-1] == tok.eos_token_id and r["target"].count("<bin_") == 4
        assert r["box"] == [1.0, 2.0, 10.0, 12.0] and r["region_text"] == "the left shape"
    e = load_out(tmp_path / "o_entailment")
    for r in e:
        assert r["target"] in ("yes", "no", "maybe") and r["label"] == "entailment"
        assert r["target_ids"] == tok(" " + r["target"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert r["nbest"][0]["logprob"] >= r["nbest"][1]["logprob"]


def test_hub_teacher_id_resolves_to_its_cached_commit(world, tmp_path):
    """A Hub id goes through huggingface_hub's cache (offline here): the manifest identity is the commit sha."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--me--tiny-ofa"
    snap = repo / "snapshots" / sha
    snap.mkdir(parents=True)
    for f in world["teacher"].iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    code = "from distill.run import resolve_teacher; f, ident = resolve_teacher('me/tiny-ofa', None); print(f, ident)"
    proc = subprocess.run([sys.executable, "-c", code], env={**cli_env(), "HF_HUB_CACHE": str(tmp_path / "hub")},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == f"{snap} {{'id': 'me/tiny-ofa', 'revision': '{sha}'}}"


def test_url_images_are_quarantined_and_an_all_quarantined_source_is_one_line(world, tmp_path, capsys):
    """An image column of URLs is never downloaded: each row is quarantined with a reason pointing to
    img2dataset-style tar shards; a source whose every row is quarantined ends in one line (and so does its
    re-run), not a traceback."""
    from datasets import Dataset

    urls = [f"http://images.example.org/{i}.jpg" for i in range(3)]
    Dataset.from_dict({"id": ["a", "b", "c"], "image": urls, "captions": [["x"]] * 3}).save_to_disk(str(tmp_path / "u"))
    args = ["--task", "caption", "--teacher", str(world["teacher"]), "--data", str(tmp_path / "u"), "--out",
            str(tmp_path / "o"), "--num-workers", "0"]
    for _ in range(2):
        code, err = _cli_main(args, capsys)
        line = err.strip().splitlines()[-1]  # after the source's progress bars
        assert code == 2 and "Traceback" not in err
        assert line.startswith("error: every one of the 3 source rows was quarantined (first: image ")
        assert line.endswith(f"reasons in {tmp_path / 'o' / 'quarantine.jsonl'}")
    reasons = [json.loads(x)["reason"] for x in (tmp_path / "o" / "quarantine.jsonl").read_text().splitlines()]
    assert len(reasons) == 3 and all(u in r and "is a URL" in r and "img2dataset" in r for u, r in zip(urls, reasons))
