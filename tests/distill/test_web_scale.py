"""`narvl-pipe distill` at web scale: the same rows from webdataset tars, a parquet glob and a map-style source;
two ranks and two independent `--task-index` tasks sharing one output equal one process; kill -9 of one task and of
the whole job mid-unit, then an immediate re-run, give every row exactly once; `--out` on `memory://` and on an S3
endpoint (moto's server, through s3fs)."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict, Features, Image, List, Value

sys.path.insert(0, str(Path(__file__).parent))
from distill_helpers import REPO, cli_env, load_out, make_teacher  # noqa: E402

from distill import shards as sh  # noqa: E402
from distill.run import DistillConfig, run_distill  # noqa: E402
from distill.shapes import ShapesConfig  # noqa: E402
from distill.shapes_webdataset import shapes_samples, write_shapes_webdataset  # noqa: E402

pytestmark = pytest.mark.slow
SHARDS, PER_SHARD, BATCH = 3, 8, 4
BAD_KEY = "000010003"  # its jpg is replaced by garbage: quarantined


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("webscale")
    teacher = make_teacher(root / "teacher")
    cfg = ShapesConfig(n_train=SHARDS * PER_SHARD, size=32)
    wds = write_shapes_webdataset(root / "wds", cfg, SHARDS)
    _corrupt(wds / "00001.tar", f"{BAD_KEY}.jpg")
    # The same rows as parquet files (one per tar) and as a map-style save_to_disk dataset.
    feats = Features({"id": Value("string"), "image": Image(), "captions": List(Value("string"))})
    rows = []
    for shard in range(SHARDS):
        part = [{"id": m["id"], "image": {"bytes": b"garbage" if key == BAD_KEY else jpeg, "path": f"{key}.jpg"},
                 "captions": m["captions"]}
                for key, jpeg, _, m in shapes_samples(cfg, "train", shard * PER_SHARD, (shard + 1) * PER_SHARD, shard)]
        (root / "pq").mkdir(exist_ok=True)
        Dataset.from_list(part, features=feats).to_parquet(str(root / "pq" / f"part-{shard:05d}.parquet"))
        rows += part
    DatasetDict({"train": Dataset.from_list(rows, features=feats)}).save_to_disk(str(root / "map"))
    base = dict(task="caption", teacher=str(teacher), batch_size=BATCH, shard_size=PER_SHARD, flush_every=BATCH,
                num_workers=1, progress=False)
    ref = run_distill(DistillConfig(data=f"{wds}/{{00000..{SHARDS - 1:05d}}}.tar", out=str(root / "ref"), **base))
    return {"root": root, "wds": wds, "base": base, "ref": root / "ref", "summary": ref}


def _corrupt(tar: Path, member: str) -> None:
    with tarfile.open(tar) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    with tarfile.open(tar, "w") as tf:
        for m, data in members:
            data = b"garbage" if m.name == member else data
            m.size = len(data)
            tf.addfile(m, io.BytesIO(data))


def _comparable(out) -> list[dict]:
    """Rows without what names the source's layout (`source_index` counts in the file or in the dataset), and
    without the references of other tasks that the tars' json holds (the other sources carry captions only)."""
    keep = ("id", "task", "prompt", "target", "target_ids", "teacher_logprob", "target_len", "captions")
    return [{k: r[k] for k in keep} | {"image": r["image"]["bytes"]} for r in load_out(out).to_list()]


def _quarantine(out) -> list[tuple[str, str]]:
    return [(r["id"], r["reason"]) for r in map(json.loads, (Path(out) / sh.QUARANTINE).read_text().splitlines())]


@pytest.mark.parametrize("source", ["tars", "parquet glob", "map-style"])
def test_two_dataloader_workers_give_every_unit_its_rows(world, source):
    """Workers are dealt units (worker w of W: units w, w+W...); a unit read through `datasets` streaming inside a
    worker must not be split across workers again (that left every second tar's shard empty, marked complete)."""
    root, base = world["root"], world["base"]
    data = {"tars": f"{world['wds']}/{{00000..{SHARDS - 1:05d}}}.tar", "parquet glob": f"{root}/pq/*.parquet",
            "map-style": str(root / "map")}[source]
    out = root / f"o-2w-{source.replace(' ', '-')}"
    s = run_distill(DistillConfig(data=data, out=str(out), **{**base, "num_workers": 2}))
    assert (s.rows, s.failures) == (SHARDS * PER_SHARD - 1, 1)
    assert _comparable(out) == _comparable(world["ref"]) and _quarantine(out) == _quarantine(world["ref"])


def test_webdataset_parquet_glob_and_map_style_give_the_same_rows(world):
    s = world["summary"]
    assert (s.rows, s.failures, s.shards) == (SHARDS * PER_SHARD - 1, 1, SHARDS)
    (bad_id, reason), = _quarantine(world["ref"])
    assert reason.startswith("cannot decode image") and bad_id == "shapes-0-train-000011"
    root, base = world["root"], world["base"]
    run_distill(DistillConfig(data=f"{root}/pq/*.parquet", out=str(root / "o-pq"), **base))
    run_distill(DistillConfig(data=str(root / "map"), out=str(root / "o-map"), **base))
    run_distill(DistillConfig(data=str(root / "pq"), out=str(root / "o-pq-folder"), streaming=True,
                              **{**base, "shard_size": 3}))  # a folder, streamed; units: row ranges of each file
    ref = _comparable(world["ref"])
    assert len(ref) == SHARDS * PER_SHARD - 1
    assert _comparable(root / "o-pq") == ref and _comparable(root / "o-map") == ref
    assert len(list((root / "o-pq-folder" / "data").glob("*.parquet"))) == SHARDS * 3  # 8 rows: 3 + 3 + 2
    assert _comparable(root / "o-pq-folder") == ref
    assert _quarantine(root / "o-pq") == _quarantine(root / "o-map") == _quarantine(world["ref"])
    streamed = load_out(world["ref"])
    assert streamed[0]["image_path"] == "000000000.jpg" and streamed[8]["source_index"] == 0  # row in its tar
    # each shard says alone where it came from
    import pyarrow.parquet as pq

    meta = json.loads(pq.read_schema(sorted((world["ref"] / "data").glob("*.parquet"))[1]).metadata[b"narvl_pipe"])
    assert meta["unit"] == {"index": 1, "file": "00001.tar", "rows": [0, None]}
    assert meta["teacher"]["family"] == "ofa" and len(meta["teacher"]["tokenizer_sha256"]) == 64


def _cli(world, out, *extra) -> list[str]:
    b = world["base"]
    return [sys.executable, "-m", "pipelines.cli", "distill", "--task", "caption", "--teacher", b["teacher"],
            "--data", f"{world['wds']}/*.tar", "--out", str(out), "--batch-size", str(BATCH), "--shard-size",
            str(PER_SHARD), "--flush-every", str(BATCH), "--num-workers", "1", *extra]


def _equal_to_reference(world, out) -> None:
    assert load_out(out).to_list() == load_out(world["ref"]).to_list()
    assert _quarantine(out) == _quarantine(world["ref"])
    assert json.loads((Path(out) / sh.MANIFEST).read_text())["status"] == "complete"
    assert not (Path(out) / sh.WORK).exists()


def test_two_ranks_and_two_independent_tasks_equal_one_process(world, tmp_path):
    ranks = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            *_cli(world, tmp_path / "ranks")[1:]], cwd=REPO, env=cli_env(), capture_output=True,
                           text=True, timeout=300)
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    _equal_to_reference(world, tmp_path / "ranks")
    tasks = [subprocess.Popen(_cli(world, tmp_path / "tasks", "--num-tasks", "2", "--task-index", str(i)), cwd=REPO,
                              env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [t.communicate(timeout=300) for t in tasks]
    assert [t.returncode for t in tasks] == [0, 0], outs
    _equal_to_reference(world, tmp_path / "tasks")
    assert sum("rows generated this run" in o for o, _ in outs) == 2


def _wait_for_flush_inside_a_unit(out: Path, procs: list[subprocess.Popen], timeout: float = 180) -> None:
    """Until a part of a unit without a marker exists: a flush mid-unit (never a lucky sleep)."""
    t0 = time.time()
    while True:
        done = {p.stem for p in (out / sh.DONE).glob("*.json")}
        if any(p.parent.name not in done for p in (out / sh.PARTS).rglob("*.parquet")):
            return
        if any(p.poll() is not None for p in procs):
            raise AssertionError(f"a run ended before flushing inside a unit: {[p.returncode for p in procs]}")
        if time.time() - t0 > timeout:
            raise AssertionError("timed out waiting for a flush inside a unit")
        time.sleep(0.005)


def test_kill_one_task_then_rerun_it_and_kill_the_whole_job_then_rerun(world, tmp_path):
    out = tmp_path / "o"
    env = cli_env()
    tasks = [subprocess.Popen(_cli(world, out, "--num-tasks", "2", "--task-index", str(i)), cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        _wait_for_flush_inside_a_unit(out, tasks)
        os.kill(tasks[0].pid, signal.SIGKILL)  # one task dies mid-unit; the other goes on
        tasks[0].wait(timeout=30)
        again = subprocess.run(_cli(world, out, "--num-tasks", "2", "--task-index", "0"), cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=300)  # at once: its claims are stale
        assert again.returncode == 0, again.stderr[-3000:]
        assert tasks[1].wait(timeout=300) == 0, tasks[1].stderr.read()[-3000:]
    finally:
        for t in tasks:
            if t.poll() is None:
                t.kill()
    _equal_to_reference(world, out)

    out = tmp_path / "job"
    job = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            *_cli(world, out)[1:]], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_flush_inside_a_unit(out, [job])
        os.killpg(job.pid, signal.SIGKILL)  # the launcher and both ranks at once
        job.wait(timeout=30)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    rerun = subprocess.run(_cli(world, out), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]  # one process now: another process count is fine
    _equal_to_reference(world, out)


def test_sigterm_flushes_and_says_how_to_resume(world, tmp_path):
    out = tmp_path / "o"
    proc = subprocess.Popen(_cli(world, out), cwd=REPO, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_flush_inside_a_unit(out, [proc])
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("distill interrupted by SIGTERM: every open shard was flushed; run the "
                                            "same command again to resume")
    assert not list((out / ".work" / "claims").glob("*.json"))  # released: anyone may resume them at once
    assert subprocess.run(_cli(world, out), cwd=REPO, env=cli_env(), capture_output=True, timeout=300).returncode == 0
    _equal_to_reference(world, out)


def _remote_rows(url: str) -> list[dict]:
    import fsspec
    import pyarrow.parquet as pq

    fs, root = fsspec.core.url_to_fs(url)
    rows = []
    for f in sorted(fs.glob(f"{root}/data/*.parquet")):
        with fs.open(f, "rb") as fh:
            rows += pq.read_table(fh).to_pylist()
    return rows


def test_out_on_memory_and_on_an_s3_endpoint(world, tmp_path):
    import fsspec
    from moto.server import ThreadedMotoServer

    local = [{k: v for k, v in r.items()} for r in _remote_rows(str(world["ref"]))]
    cfg = DistillConfig(data=f"{world['wds']}/*.tar", out="memory://narvl-test/out", **world["base"])
    assert run_distill(cfg).rows == len(local)
    assert _remote_rows("memory://narvl-test/out") == local
    assert run_distill(cfg).noop

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    old_conf = dict(fsspec.config.conf.get("s3", {}))
    keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    old_env = {k: os.environ.get(k) for k in keys}
    try:
        host, port = server.get_host_and_port()
        os.environ.update(keys)
        fsspec.config.conf["s3"] = {"endpoint_url": f"http://{host}:{port}"}
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("narvl-bucket")
        cfg = DistillConfig(data=f"{world['wds']}/*.tar", out="s3://narvl-bucket/kd", **world["base"])
        summary = run_distill(cfg)
        assert (summary.rows, summary.failures) == (len(local), 1)
        assert _remote_rows("s3://narvl-bucket/kd") == local
        assert "configs:" in fs.cat_file("narvl-bucket/kd/README.md").decode()
        assert not fs.exists("narvl-bucket/kd/.work")
        assert run_distill(cfg).noop
    finally:
        fsspec.config.conf["s3"] = old_conf
        for k, v in old_env.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        server.stop()


def test_hf_out_is_written_in_the_work_dir_then_pushed(world, tmp_path):
    """`--out hf://datasets/user/name`: the shards are written in `--work-dir`, then uploaded by `push` in one
    resumable upload; offline here, so the push fails in one line and the staged output is complete (a re-run of
    `narvl-pipe push` uploads it)."""
    work = tmp_path / "stage"
    res = subprocess.run(_cli(world, "hf://datasets/someone/kd", "--work-dir", str(work)), cwd=REPO,
                         env={**cli_env(), "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error: push to someone/kd on ") and "offline mode is enabled" in line
    _equal_to_reference(world, work)


def test_shapes_webdataset_is_laid_out_as_img2dataset_writes_it(world):
    import pyarrow.parquet as pq

    wds = world["wds"]
    for shard in range(SHARDS):
        stats = json.loads((wds / f"{shard:05d}_stats.json").read_text())
        meta = pq.read_table(wds / f"{shard:05d}.parquet").to_pylist()
        with tarfile.open(wds / f"{shard:05d}.tar") as tf:
            names = tf.getnames()
        keys = [f"{shard:05d}{k:04d}" for k in range(PER_SHARD)]
        assert stats["count"] == stats["successes"] == PER_SHARD and [m["key"] for m in meta] == keys
        assert names == [f"{k}.{ext}" for k in keys for ext in ("jpg", "txt", "json")]
