"""distill.shards / distill.claims / distill.store: parts, chains, compaction, markers, claims, statistics."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets import Features, List, Value, load_dataset

from distill import shards as sh
from distill.claims import Claims, Owner
from distill.store import Store
from distill.units import Unit, plan_rows

FEATS = Features({"id": Value("string"), "x": List(Value("int32")), "teacher_logprob": Value("float32"),
                  "target_len": Value("int32")})


def _rows(lo, hi):
    return [{"id": f"r{i}", "x": [i, i + 1], "teacher_logprob": -float(i), "target_len": i % 5} for i in range(lo, hi)]


def test_plan_covers_every_row_once():
    for n, size in [(0, 3), (1, 3), (10, 3), (12, 4), (7, 100)]:
        covered = [i for u in plan_rows(n, size) for i in range(u.lo, u.hi)]
        assert covered == list(range(n))
        assert [u.index for u in plan_rows(n, size)] == list(range(len(plan_rows(n, size))))


def _writer(store, unit, chain=None):
    return sh.UnitWriter(store, unit, FEATS.arrow_schema, sh.shard_file("train", unit.index, 3), chain or sh.Chain())


def test_flush_crash_resume_complete_holds_each_row_once(tmp_path):
    store, unit = Store(str(tmp_path)), Unit(1, None, 10, 22)
    w = _writer(store, unit)
    w.add(_rows(10, 14)); w.quarantine("bad14", 14, "corrupt image"); w.advance(5); w.flush()
    w.add(_rows(15, 18)); w.advance(3); w.flush()
    w.add(_rows(18, 20)); w.advance(2)  # buffered, never flushed: lost by the "crash"
    chain = sh.find_chain(store, 1)
    assert (chain.end, chain.last, len(chain.parts)) == (8, False, 2)

    w2 = _writer(store, unit, chain)
    w2.add(_rows(18, 22)); w2.advance(4)
    marker = w2.complete()
    assert marker["rows"] == 11 and marker["source_rows"] == 12
    assert marker["quarantine"] == [{"id": "bad14", "index": 14, "reason": "corrupt image"}]
    table = pq.read_table(tmp_path / marker["shard"])
    assert table.to_pylist() == _rows(10, 14) + _rows(15, 22)
    assert not (tmp_path / sh.PARTS / "00001").exists() and sh.done_units(store) == {1}
    # `datasets` reads the shard as it is, with its features
    ds = load_dataset("parquet", data_files=str(tmp_path / marker["shard"]), split="train")
    assert ds.features == FEATS and ds.to_list() == table.to_pylist()


def test_chain_prefers_the_part_reaching_furthest_and_stops_at_a_gap(tmp_path):
    """Two writers of one unit (a stale claim taken over) leave overlapping parts: any chain from 0 holds each row
    once; a gap ends the chain."""
    store, unit = Store(str(tmp_path)), Unit(0, None, 0, 12)
    a = _writer(store, unit)
    a.add(_rows(0, 4)); a.advance(4); a.flush()
    a.add(_rows(4, 8)); a.advance(4); a.flush()
    b = _writer(store, unit)
    b.add(_rows(0, 6)); b.advance(6); b.flush()  # from row 0, this part reaches furthest (6 > 4)
    chain = sh.find_chain(store, 0)
    assert chain.parts == ["0000000000-0000000006.parquet"] and chain.end == 6
    c = _writer(store, unit, sh.find_chain(store, 0))
    c.add(_rows(6, 12)); c.advance(6)
    marker = c.complete()
    assert pq.read_table(tmp_path / marker["shard"]).to_pylist() == _rows(0, 12)


def test_all_quarantined_unit_is_an_empty_loadable_shard(tmp_path):
    store, unit = Store(str(tmp_path)), Unit(2, None, 0, 3)
    w = _writer(store, unit)
    for i in range(3):
        w.quarantine(f"r{i}", i, "empty question")
    w.advance(3)
    marker = w.complete()
    assert marker["rows"] == 0 and len(marker["quarantine"]) == 3 and marker["stats"]["target_len"] == {"n": 0}
    assert pq.read_table(tmp_path / marker["shard"]).num_rows == 0
    other = _writer(store, Unit(0, None, 0, 2))
    other.add(_rows(0, 2)); other.advance(2)
    files = [str(tmp_path / other.complete()["shard"]), str(tmp_path / marker["shard"])]
    ds = load_dataset("parquet", data_files=files, split="train")  # read with the others
    assert ds.to_list() == _rows(0, 2) and ds.features == FEATS


def test_merged_statistics_equal_numpy_on_all_rows():
    rng = np.random.default_rng(0)
    parts = [rng.normal(-3, 1, n) for n in (7, 300, 41)]
    merged = sh.merged_stats([sh.unit_stats(p) for p in parts], (5, 25, 50, 75, 95))
    allv = np.concatenate(parts)
    assert merged["mean"] == pytest.approx(allv.mean()) and merged["std"] == pytest.approx(allv.std())
    assert (merged["min"], merged["max"]) == (allv.min(), allv.max())
    for p in (5, 25, 50, 75, 95):
        assert merged[f"p{p}"] == pytest.approx(np.percentile(allv, p))


_HOLDER = """
import sys, time
from distill.claims import Claims, Owner
from distill.store import Store
claims = Claims(Store(sys.argv[1]), Owner.this_process("task 0/2 rank 0/1"), 3600)
assert claims.take(0, lambda i: False)
print("claimed", flush=True)
time.sleep(60)
"""


def test_claims_exclusive_while_the_owner_lives_and_taken_over_once_it_is_killed(tmp_path):
    store = Store(str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert proc.stdout.readline().strip() == "claimed"
        other = Claims(store, Owner.this_process("task 1/2 rank 0/1"), 3600)
        assert not other.take(0, lambda i: False)  # a live owner on this host, lease not expired
        assert other.take(1, lambda i: False) and not other.take(2, lambda i: True)  # free / done
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert other.take(0, lambda i: False)  # its owner is gone: taken over at once
        assert json.loads((tmp_path / ".work/claims/00000.json").read_text())["owner"]["nonce"] == other.owner.nonce
    finally:
        if proc.poll() is None:
            proc.kill()


def test_expired_claim_of_another_host_is_stale_and_a_live_one_is_not(tmp_path):
    store = Store(str(tmp_path))
    me = Claims(store, Owner.this_process("task 0/1 rank 0/1"), 60)
    elsewhere = {"host": "other-node", "pid": 1, "started": 0.0, "slot": "task 3/4 rank 0/1", "nonce": "n"}
    import time

    assert me.stale({"owner": elsewhere, "expires": time.time() - 1})
    assert not me.stale({"owner": elsewhere, "expires": time.time() + 60})
    # the same task slot on another host: a requeued array task, its old run is over
    assert me.stale({"owner": {**elsewhere, "slot": "task 0/1 rank 0/1"}, "expires": time.time() + 60})
