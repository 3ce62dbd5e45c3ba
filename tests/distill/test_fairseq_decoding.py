"""The OFA teacher's caption and grounding decoding equals fairseq's `SequenceGenerator` as OFA runs it: the same
best sequence and the same 5-best lists (ids in order, scores within 1e-4 relative) at batch 1 and at batch 6 with
padding, on random OFA-tiny-shaped weights (`fairseq_cases`).

- against the official port itself, side by side (needs `OFA_OFFICIAL_SRC`: the folder the port's vendored
  transformers 4.18 was installed to, see benchmarks/teacher_vs_official.py);
- against its outputs recorded in tests/fixtures/ofa-sequence-generator (CI: no official port there).
Official values: OFA-Sys/OFA `models/sequence_generator.py` (the port's `models/ofa/generate/sequence_generator.py`),
flags of `run_scripts/caption/evaluate_caption.sh:28-30` and `run_scripts/refcoco/evaluate_refcoco.sh:29-33`.
"""
import json
import os
import sys
from functools import lru_cache
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the suite runs with --import-mode=importlib
import fairseq_cases as fc  # noqa: E402

OFFICIAL = os.environ.get("OFA_OFFICIAL_SRC")
REQUESTS = [(case, batch) for case in fc.CASES for batch in (1, fc.ROWS)]


@lru_cache(maxsize=1)
def _tiny():
    model = fc.tiny_model()
    return model, fc.teacher(model)


@lru_cache(maxsize=1)
def _expected() -> dict:
    return json.loads((fc.FIXTURE / "expected.json").read_text())


def test_fixture_matches_the_cases_and_exercises_finalisation():
    """The recorded outputs belong to this model, these inputs and these flags, and their hypotheses end at many
    lengths (fairseq's finalisation before max_len is exercised, not only the forced last step)."""
    e = _expected()
    assert (e["seed"], e["eos_gain"], e["resolution"], e["rows"]) == (fc.SEED, fc.EOS_GAIN, fc.RESOLUTION, fc.ROWS)
    assert e["model"] == fc.TINY
    assert {k: v["flags"] for k, v in e["cases"].items()} == {f"{c}_b{b}": fc.CASES[c][1] for c, b in REQUESTS}
    lengths = {len(h["tokens"]) for row in e["cases"][f"caption_b{fc.ROWS}"]["hypos"] for h in row}
    assert len(lengths) >= 5 and max(lengths) == 17  # 16 tokens + EOS at most (max_len_b 16)
    for case in ("grounding", "grounding_bins"):
        assert all(len(h["tokens"]) == 5 for row in e["cases"][f"{case}_b{fc.ROWS}"]["hypos"] for h in row)
    # the teacher also suppresses <s> and <unk> under the bins' constraint_range: the official lists hold none
    assert not any({0, 3} & set(h["tokens"]) for b in (1, fc.ROWS)
                   for row in e["cases"][f"grounding_bins_b{b}"]["hypos"] for h in row)


@pytest.mark.parametrize("case,batch", REQUESTS)
def test_teacher_reproduces_recorded_sequence_generator(case, batch):
    _, teacher = _tiny()
    expected = _expected()["cases"][f"{case}_b{batch}"]["hypos"]
    cmp = fc.port.compare_hypos(fc.project_hypos(teacher, case, batch), expected)
    print(f"\n[fairseq] {case} batch {batch}: {cmp}")
    assert cmp["identical"], cmp


@pytest.mark.skipif(not OFFICIAL, reason="OFA_OFFICIAL_SRC is not set: it names the folder OFA-Sys's transformers "
                    "port is installed to (pip install --no-deps --target DIR, see benchmarks/teacher_vs_official.py); "
                    "CI has none and checks the recorded outputs instead")
def test_teacher_equals_official_sequence_generator_side_by_side():
    model, teacher = _tiny()
    answers = fc.official_hypos(OFFICIAL, model, teacher, REQUESTS)
    results = {}
    for (case, batch), theirs in zip(REQUESTS, answers):
        results[f"{case}_b{batch}"] = cmp = fc.port.compare_hypos(fc.project_hypos(teacher, case, batch), theirs)
        print(f"\n[fairseq side by side] {case} batch {batch}: {cmp}")
    assert all(cmp["identical"] for cmp in results.values()), results
