"""The timing harness itself, on pure-Python sides: pinning (of a side and of the processes it starts), thread
settings, warm-up dropped, order alternated, paired ratios, and loud failures when outputs differ."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(Path(__file__).parent))

from bench_checks import check_harness, pinned_cores  # noqa: E402
from timing import Entry, OutputMismatch, Pair, Session, Settings, Side, add_args  # noqa: E402

TOY = str(Path(__file__).with_name("toy_bench.py"))


def _side(name: str, kind: str) -> Side:
    return Side(name, TOY, "side", {"kind": kind})


def _settings(rounds=3, warmup=1, threads=1) -> Settings:
    return Settings(rounds=rounds, warmup=warmup, threads=threads, cores=[pinned_cores()])


def test_pinned_sides_alternate_drop_the_warmup_and_pair_rounds():
    with Session([_side("a", "counted"), _side("b", "counted"), _side("env", "environment"),
                  _side("pin", "affinity")], _settings(rounds=4, warmup=2, threads=1)) as s:
        a, b = Entry("a", "1"), Entry("b", "1")
        [pair] = s.run([a, b], [Pair("a vs b", a, b, same_outputs=True)])
        env = s.call(Entry("env", "0"), fetch=True)["outputs"]
        pin = s.call(Entry("pin", "0"), fetch=True)["outputs"]
        result = s.result()
    check_harness(result, rounds=4, cores=pinned_cores(), torch=False)
    # each side's own call count is its 'seconds': the 2 warm-up rounds are gone, rounds 3..6 are kept
    assert result["times"] == {"a/1": [3.0, 4.0, 5.0, 6.0], "b/1": [3.0, 4.0, 5.0, 6.0]}
    assert result["orders"] == [[["a/1", "b/1"], ["b/1", "a/1"], ["a/1", "b/1"], ["b/1", "a/1"]]]
    assert result["info"]["a/1"] == [{"call": 1}] * 4
    assert pair["speedup"] == 1.0 and pair["outputs"] == "equal every round"
    # the thread count is the harness's; the wait policy is the user's (PASSIVE slowed 2-thread sides 2x)
    assert env == {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}
    assert pin == {"self": pinned_cores(), "child": str(pinned_cores())}  # a side's processes share its cores


def test_different_outputs_fail_loudly():
    loop, formula = Entry("loop", "1000"), Entry("formula", "1000")
    with Session([_side("loop", "loop"), _side("formula", "formula"), _side("wrong", "off_by_one")],
                 _settings()) as s:
        [pair] = s.run([loop, formula], [Pair("formula vs loop", formula, loop, same_outputs=True)])
        assert pair["same_outputs"] and len(pair["speedup_per_round"]) == 3
        with pytest.raises(ValueError, match="timed in an earlier run"):
            s.run([loop], [])
        loop2, wrong2 = Entry("loop", "2000"), Entry("wrong", "2000")
        with pytest.raises(OutputMismatch, match="computed different outputs in round 0"):
            s.run([loop2, wrong2], [Pair("wrong vs loop", wrong2, loop2, same_outputs=True)])
        # sides that compute different things by design are still checked for stable outputs
        loop3, wrong3 = Entry("loop", "3000"), Entry("wrong", "3000")
        [other] = s.run([loop3, wrong3], [Pair("wrong vs loop", wrong3, loop3, same_outputs=False)])
        assert other["outputs"].startswith("each side stable")
    with Session([_side("drift", "drifting")], _settings()) as s:
        with pytest.raises(OutputMismatch, match="outputs changed between rounds"):
            s.run([Entry("drift", "0")], [])


def test_a_recorded_figure_needs_seven_rounds_and_valid_cores():
    parser = argparse.ArgumentParser()
    add_args(parser)
    with pytest.raises(SystemExit, match="at least 7 rounds"):
        Settings.from_args(parser.parse_args(["--rounds", "3"]))
    assert Settings.from_args(parser.parse_args(["--test-rounds", "2"])).rounds == 2
    default = Settings.from_args(parser.parse_args([]))
    assert default.rounds == 7 and default.cores == [pinned_cores()]
    with pytest.raises(SystemExit, match="within"):
        Settings.from_args(parser.parse_args(["--cores", "999"]))
    two = Settings.from_args(parser.parse_args(["--cores", f"{pinned_cores()[0]};{pinned_cores()[0]}"]))
    assert two.cores == [pinned_cores(), pinned_cores()]


def test_a_failing_side_names_itself():
    with pytest.raises(RuntimeError, match="side bad failed"):
        Session([Side("bad", TOY, "no_such_factory")], _settings())
