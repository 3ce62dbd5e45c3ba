"""distill.shards: shard plan, crash-safe shard writer, run lock, assembly into a load_from_disk folder."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pytest
from datasets import Dataset, Features, List, Value, load_from_disk

from distill import shards as sh


def test_plan_covers_every_row_once_and_assignment_partitions_pending():
    for n, size in [(0, 3), (1, 3), (10, 3), (12, 4), (7, 100)]:
        plan = sh.plan_shards(n, size)
        covered = [i for lo, hi in plan for i in range(lo, hi)]
        assert covered == list(range(n))
        assert all(lo == k * size for k, (lo, _) in enumerate(plan))
    pending = [0, 2, 3, 5, 8, 9, 11]
    for world in (1, 2, 3, 5):
        parts = [sh.assign_shards(pending, r, world) for r in range(world)]
        assert sorted(s for p in parts for s in p) == pending
        assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced
    assert sh.assign_shards(list(range(6)), 1, 2) == [1, 3, 5]  # fresh run: shard i -> rank i % world


FEATS = Features({"id": Value("string"), "x": List(Value("int32"))})


def _rows(lo, hi):
    return [{"id": f"r{i}", "x": [i, i + 1]} for i in range(lo, hi)]


def test_writer_flush_crash_resume_complete(tmp_path):
    schema = FEATS.arrow_schema
    w = sh.ShardWriter(tmp_path, 3, schema)
    assert w.resume() == 0
    w.add(_rows(0, 4)); w.quarantine("bad4", 4, "corrupt image"); w.flush(5)
    w.add(_rows(5, 8)); w.flush(8)
    w.add(_rows(8, 10))  # buffered, never flushed: lost by the "crash"
    w.close()
    # A torn tail: bytes of a batch that the progress file does not vouch for.
    with open(w.partial, "ab") as fh:
        fh.write(b"\xff\xff\xff\xff\x10\x00\x00\x00garbage")
    assert not w.final.exists()

    w2 = sh.ShardWriter(tmp_path, 3, schema)
    assert w2.probe() == 8
    assert w2.resume() == 8
    assert w2.bad == [{"id": "bad4", "index": 4, "reason": "corrupt image"}]
    w2.add(_rows(8, 12)); w2.complete(12)
    assert w2.final.is_file() and not w2.partial.exists() and not w2.progress_file.exists()
    got = Dataset.from_file(str(w2.final))
    expected = _rows(0, 4) + _rows(5, 12)
    assert got.to_list() == expected
    assert [json.loads(l) for l in w2.quarantine_file.read_text().splitlines()] == [
        {"id": "bad4", "index": 4, "reason": "corrupt image"}]


def test_progress_claiming_more_than_the_stream_holds_restarts_the_shard(tmp_path):
    schema = FEATS.arrow_schema
    w = sh.ShardWriter(tmp_path, 0, schema)
    w.resume(); w.add(_rows(0, 2)); w.flush(2); w.close()
    sh.write_json(w.progress_file, {"rows": 5, "source_done": 5, "quarantine": []})
    assert sh.ShardWriter(tmp_path, 0, schema).probe() == 0
    # A partial with another schema (another run's leftovers) is not reused either.
    other = Features({"id": Value("string")}).arrow_schema
    assert sh.ShardWriter(tmp_path, 0, other).probe() == 0


def test_crash_before_first_flush_after_resume_keeps_old_partial(tmp_path):
    schema = FEATS.arrow_schema
    w = sh.ShardWriter(tmp_path, 0, schema)
    w.resume(); w.add(_rows(0, 3)); w.flush(3); w.close()
    w2 = sh.ShardWriter(tmp_path, 0, schema)
    w2.resume(); w2.add(_rows(3, 4)); w2.close()  # crashed before flushing: the copy is never swapped in
    w3 = sh.ShardWriter(tmp_path, 0, schema)
    assert w3.resume() == 3
    w3.add(_rows(3, 6)); w3.complete(6)
    assert Dataset.from_file(str(w3.final)).to_list() == _rows(0, 6)


def test_assemble_writes_what_save_to_disk_writes_and_stores_the_data_once(tmp_path):
    """The finished folder is `datasets`' own `save_to_disk` layout (no hand-written `datasets` files), opens with
    `load_from_disk`, and once the shards are removed the rows are on disk once."""
    out, schema = tmp_path / "out", FEATS.arrow_schema
    for i, (lo, hi) in enumerate(sh.plan_shards(7, 3)):
        w = sh.ShardWriter(out, i, schema)
        w.resume()
        w.add(_rows(lo, hi) if i != 1 else [])
        if i == 1:
            for j in range(lo, hi):
                w.quarantine(f"r{j}", j, "empty question")
        w.complete(hi - lo)
    assert sh.completed_shards(out, 3) == {0, 1, 2} and not sh.is_assembled(out)
    sh.assemble(out, 3, FEATS, "train")
    sh.remove_shards(out)
    assert sh.is_assembled(out) and sh.counts(out) == (4, 3)
    ds = load_from_disk(str(out))
    assert ds.to_list() == _rows(0, 3) + _rows(6, 7) and ds.features == FEATS and ds.split == "train"
    assert [json.loads(l)["id"] for l in (out / sh.QUARANTINE).read_text().splitlines()] == ["r3", "r4", "r5"]

    ref = tmp_path / "ref"  # the independent reference: datasets writing the same rows itself
    Dataset.from_list(_rows(0, 3) + _rows(6, 7), features=FEATS, split="train").save_to_disk(str(ref))
    ours = sorted(p.name for p in out.iterdir())
    assert ours == sorted([*os.listdir(ref), sh.QUARANTINE])  # nothing else: no shards/, no .assembling/
    assert json.loads((out / "dataset_info.json").read_text()) == json.loads((ref / "dataset_info.json").read_text())
    assert [f["filename"] for f in ds.cache_files] == [str(out / n) for n in sorted(os.listdir(ref)) if n.endswith(".arrow")]


def test_an_assembly_cut_short_leaves_the_shards_to_assemble_again(tmp_path, monkeypatch):
    out, schema = tmp_path / "out", FEATS.arrow_schema
    for i, (lo, hi) in enumerate(sh.plan_shards(4, 2)):
        w = sh.ShardWriter(out, i, schema)
        w.resume(); w.add(_rows(lo, hi)); w.complete(hi - lo)
    real = os.replace

    def crash_on_state(src, dst):  # the process dies just before the state file would complete the folder
        if str(dst).endswith("state.json"):
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(sh.os, "replace", crash_on_state)
    with pytest.raises(KeyboardInterrupt):
        sh.assemble(out, 2, FEATS, "train")
    monkeypatch.setattr(sh.os, "replace", real)
    assert not sh.is_assembled(out) and sh.completed_shards(out, 2) == {0, 1}
    sh.assemble(out, 2, FEATS, "train")
    assert load_from_disk(str(out)).to_list() == _rows(0, 4)


_HOLDER = """
import sys, time
from distill.shards import RunLock
lock = RunLock(sys.argv[1])
assert lock.acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_lock_is_exclusive_and_dies_with_its_process(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        assert not sh.RunLock(tmp_path).acquire()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        lock = sh.RunLock(tmp_path)
        assert lock.acquire()  # the kernel released the dead holder's flock: no stale lock
        lock.release()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_folder_of_the_earlier_layout_keeps_its_shards(tmp_path):
    """Earlier versions made `DIR` loadable with a `state.json` pointing at `shards/` (the files this test writes
    by hand, as they did): tidying up after a run must never delete those data files."""
    from dataclasses import asdict

    from datasets import DatasetInfo

    w = sh.ShardWriter(tmp_path, 0, FEATS.arrow_schema)
    w.resume(); w.add(_rows(0, 3)); w.complete(3)
    sh.write_json(tmp_path / "dataset_info.json", asdict(DatasetInfo(features=FEATS)))
    sh.write_json(tmp_path / "state.json", {
        "_data_files": [{"filename": "shards/shard-00000.arrow"}], "_fingerprint": "abc", "_format_columns": None,
        "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": "train"})
    sh.remove_shards(tmp_path)
    assert sh.shard_path(tmp_path, 0).is_file() and load_from_disk(str(tmp_path)).to_list() == _rows(0, 3)
