"""`distill.ofa.fairseq_rules`, piece by piece against hand-computed fairseq steps (OFA-Sys/OFA
`models/sequence_generator.py`, "SG" with main-branch line numbers; `fairseq/ngram_repeat_block.py`)."""
import math
import sys
from pathlib import Path

import pytest
import torch
from transformers import NoRepeatNGramLogitsProcessor, SuppressTokensLogitsProcessor

sys.path.insert(0, str(Path(__file__).parent))  # the suite runs with --import-mode=importlib
from ofa_helpers import other_config, randomized  # noqa: E402

from distill.config import DistillConfig  # noqa: E402
from distill.errors import UserError  # noqa: E402
from distill.generation import generation_settings  # noqa: E402
from distill.ofa import OFAModel  # noqa: E402
from distill.ofa.fairseq_rules import (  # noqa: E402
    UNWRITTEN_ID,
    ConstraintRangeLogitsProcessor,
    FirstComeFinalisation,
    LengthLogitsProcessor,
    LogSoftmaxLogitsProcessor,
    generate_kwargs,
    sequence_generator_settings,
    uses_fairseq_rules,
)
from distill.tasks import get_task  # noqa: E402
from distill.teachers.ofa import OFATeacher  # noqa: E402

INF = float("-inf")


class Ids:
    """OFA's special ids, all `generate_kwargs` reads of a tokenizer."""
    bos_token_id, pad_token_id, eos_token_id, unk_token_id = 0, 1, 2, 3


def _log_softmax(values: list[float]) -> list[float]:
    finite = [v for v in values if v != INF]
    norm = math.log(sum(math.exp(v) for v in finite))
    return [v - norm if v != INF else INF for v in values]


def test_constraint_range_renormalises_over_the_specials_and_the_range():
    """SG:877-880: logits of ids 4..start-1 and end.. set to -inf, then log_softmax (SG:882)."""
    logits = [0.5, -1.0, 2.0, 0.1, 3.0, 1.5, -0.3, 0.7, 1.1, 2.2]
    start, end = 6, 9
    masked = [v if i < 4 or start <= i < end else INF for i, v in enumerate(logits)]
    expected = _log_softmax(masked)  # = [0.5, -1, 2, .1, -inf, -inf, -.3, .7, 1.1, -inf] renormalised by hand
    scores = torch.tensor([logits]).log_softmax(-1)  # generate() hands processors log-probs
    out = ConstraintRangeLogitsProcessor(start, end)(torch.zeros(1, 3, dtype=torch.long), scores)
    for got, want in zip(out[0].tolist(), expected):
        assert (got == want == INF) or got == pytest.approx(want, abs=1e-6)


def test_length_rules_min_len_and_eos_own_log_prob_at_max_len():
    """SG:391-393: EOS is -inf while step < min_len; SG:410-412: from step max_len on, every id but EOS is -inf and
    EOS keeps its log-prob (not 0)."""
    scores = torch.tensor([[-1.0, -2.0, -3.5, -0.5], [-0.25, -4.0, -6.0, -2.0]])
    proc = LengthLogitsProcessor(min_len=2, max_len=3, eos_token_id=2)
    prefix = lambda step: torch.zeros(2, 1 + step, dtype=torch.long)  # noqa: E731  <s> + `step` tokens
    assert proc(prefix(1), scores).tolist() == [[-1.0, -2.0, INF, -0.5], [-0.25, -4.0, INF, -2.0]]
    assert torch.equal(proc(prefix(2), scores), scores)
    assert proc(prefix(3), scores).tolist() == [[INF, INF, -3.5, INF], [INF, INF, -6.0, INF]]
    assert scores[0, 2] == -3.5  # the input is left as it was


def test_first_come_finalisation_keeps_the_first_hypotheses_in_candidate_order():
    """SG:454-462 and 722-735: only EOS among the first `beam` candidates is finalised, in candidate order, while the
    sentence has fewer than `beam`; an EOS ranked lower is neither finalised (generate()'s top_num_beam_mask) nor
    continued (it counts as finished)."""
    eos, beams = 2, 2  # 2 sentences x 4 candidates (2 x beam), best first
    crit = FirstComeFinalisation(beams, eos)

    def step(last_tokens, length):
        ids = torch.full((8, length), 7)
        ids[:, -1] = torch.tensor(last_tokens)
        return crit(ids, None).view(2, 4).tolist()

    # sentence 0: EOS at ranks 0 and 3 -> rank 0 finalised (slot 1 of 2), rank 3 only stopped; sentence 1: none
    assert step([2, 5, 6, 2, 5, 6, 7, 8], 2) == [[True, False, False, True], [False] * 4]
    # sentence 0: EOS at ranks 0 and 1, one slot left -> rank 0 finalised, rank 1 refused (it may run on: the
    # sentence is full); sentence 1: EOS at rank 1 -> finalised
    assert step([2, 2, 6, 7, 5, 2, 7, 8], 3) == [[True, False, False, False], [False, True, False, False]]
    # sentence 0 is full: no EOS is finalised any more
    assert step([2, 5, 6, 7, 2, 2, 7, 8], 4) == [[False, False, False, False], [True, False, False, False]]
    # a new generate() call (shorter input) starts with empty slots
    assert step([2, 2, 6, 7, 5, 6, 7, 8], 2) == [[True, True, False, False], [False] * 4]
    greedy = FirstComeFinalisation(1, eos)
    assert greedy(torch.tensor([[0, 5, 2], [0, 5, 6]]), None).tolist() == [True, False]


def _fairseq_step(logits, step, min_len, max_len, constraint=None, unkpen=0.0, banned=()):
    """One row of SG's step by hand: constraint on the logits, log_softmax, EOS before min_len, pad, unk, max_len,
    n-gram bans (SG:877-884, 391-398, 410-412, 435-436)."""
    if constraint:
        logits = [v if i < 4 or constraint[0] <= i < constraint[1] else INF for i, v in enumerate(logits)]
    lp = _log_softmax(logits)
    if step < min_len:
        lp[2] = INF
    lp[1] = INF
    lp[3] -= unkpen
    if step >= max_len:
        lp = [v if i == 2 else INF for i, v in enumerate(lp)]
    return [INF if i in banned else v for i, v in enumerate(lp)]


@pytest.mark.parametrize("step", [0, 1, 3, 4])
def test_generate_kwargs_processors_equal_a_fairseq_step(step):
    """The whole processor list of `generate_kwargs` on one step equals SG's step, computed by hand: constraint_range
    first, then min_len, pad, unkpen, max_len, no-repeat-ngram (n=2: after "<s> 5 6 5", 6 is banned)."""
    settings = dict(sequence_generator_settings(beam=2, max_len_b=4, min_len=2, no_repeat_ngram_size=2, unkpen=0.5,
                                                constraint_range=(5, 9)), num_return_sequences=1)
    kw = generate_kwargs(settings, Ids)
    logits = [0.3, 1.0, 0.8, 0.2, 5.0, 1.2, 0.9, -0.5, 0.4, 2.0]
    prefix = [0, 5, 6, 5, 7][:step + 1]
    banned = {6} if step == 3 else set()
    out = torch.tensor([logits]).log_softmax(-1)
    for proc in kw["logits_processor"]:
        out = proc(torch.tensor([prefix]), out)
    expected = _fairseq_step(logits, step, min_len=2, max_len=4, constraint=(5, 9), unkpen=0.5, banned=banned)
    for got, want in zip(out[0].tolist(), expected):
        assert (got == want == INF) or got == pytest.approx(want, abs=1e-6)


def test_generate_kwargs_shape():
    """Which generate() settings carry the rules: built-in processors where they match fairseq, no forced EOS,
    the length limit one step past max_len (never reached), first-come finalisation, fairseq's length penalty."""
    settings = dict(sequence_generator_settings(beam=5, max_len_b=16, min_len=1, no_repeat_ngram_size=3),
                    num_return_sequences=3)
    assert settings["max_new_tokens"] == 17 and uses_fairseq_rules(settings)
    kw = generate_kwargs(settings, Ids)
    assert [type(p) for p in kw["logits_processor"]] == [LengthLogitsProcessor, SuppressTokensLogitsProcessor,
                                                          NoRepeatNGramLogitsProcessor]
    assert [type(c) for c in kw["stopping_criteria"]] == [FirstComeFinalisation]
    assert kw["max_new_tokens"] == 18 and kw["min_new_tokens"] == 0 and kw["no_repeat_ngram_size"] == 0
    assert kw["forced_eos_token_id"] is None and kw["eos_token_id"] == UNWRITTEN_ID
    assert kw["early_stopping"] is True and kw["length_penalty"] == 1.0 and kw["num_return_sequences"] == 3
    assert "decoding" not in kw and "constraint_range" not in kw
    assert generate_kwargs({"num_beams": 4, "max_new_tokens": 3}, Ids) == {"num_beams": 4, "max_new_tokens": 3}
    assert "length_penalty" not in settings  # fairseq's default lenpen 1 is generate()'s default too
    assert sequence_generator_settings(normalize_scores=False)["length_penalty"] == 0.0  # --unnormalized
    greedy = generate_kwargs(dict(settings, num_beams=1), Ids)
    assert isinstance(greedy["logits_processor"][0], LogSoftmaxLogitsProcessor) and "length_penalty" not in greedy
    with pytest.raises(UserError, match="fewer than the task's min_new_tokens 5"):  # SG:268-270
        generate_kwargs(sequence_generator_settings(max_len_b=4, min_len=5), Ids)


def test_too_short_max_new_tokens_is_a_user_error_before_the_model_loads():
    """`distill --max-new-tokens 4` on grounding (4 tokens + EOS, min_len 4): one line, from the settings alone."""
    fixture = Path(__file__).parents[1] / "fixtures" / "ofa-tokenizer"  # a teacher folder without weights
    config = DistillConfig(task="grounding", teacher=str(fixture), data="-", out="-", max_new_tokens=4, resolution=32)
    teacher = OFATeacher.from_pretrained(fixture, {"id": "tokenizer-only"}, config, "cpu")
    with pytest.raises(UserError, match="max_new_tokens 4 leaves 3 tokens before EOS"):
        generation_settings(config, get_task("grounding"), teacher, None)
    ok = generation_settings(DistillConfig(**{**config.__dict__, "max_new_tokens": 5}), get_task("grounding"),
                             teacher, None)[0]
    assert ok["max_new_tokens"] == 5 and teacher.model is None


def test_greedy_equals_a_fairseq_beam1_loop():
    """fairseq with beam 1 is greedy over its rules; generate()'s greedy search with these kwargs gives the same ids
    and per-token scores as a hand loop over full forwards (random weights, n-gram blocking and EOS's own log-prob at
    max_len included)."""
    model = randomized(OFAModel(other_config()), seed=3)
    input_ids = torch.tensor([[0, 17, 52, 9, 33, 2], [0, 8, 2, 1, 1, 1]])
    patch_images = torch.rand(2, 3, 48, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    settings = dict(sequence_generator_settings(beam=1, max_len_b=6, min_len=2, no_repeat_ngram_size=2),
                    num_return_sequences=1)
    with torch.no_grad():
        res = model.generate(input_ids=input_ids, patch_images=patch_images, output_scores=True,
                             return_dict_in_generate=True, **generate_kwargs(settings, Ids))
        steps = model.compute_transition_scores(res.sequences, res.scores, normalize_logits=False)
        for row in range(2):
            tokens, scores = [0], []
            for step in range(7):
                logits = model(input_ids=input_ids[row:row + 1], patch_images=patch_images[row:row + 1],
                               decoder_input_ids=torch.tensor([tokens])).logits[0, -1].tolist()
                banned = {b for a, b in zip(tokens, tokens[1:]) if a == tokens[-1]}
                lp = _fairseq_step(logits, step, min_len=2, max_len=6, banned=banned)
                best = max(range(len(lp)), key=lp.__getitem__)
                tokens.append(best)
                scores.append(lp[best])
                if best == 2:
                    break
            got = res.sequences[row].tolist()[:len(tokens)]
            assert got == tokens
            assert steps[row, :len(scores)].tolist() == pytest.approx(scores, abs=1e-4)
