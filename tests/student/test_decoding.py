"""CTC decoding: NARVL's per-task rules on hand-made scores, prefix beam search against brute-force enumeration."""
import itertools
import math
from collections import defaultdict

import pytest
import torch

from distill.tasks import get_task

from student.decoding import (
    DecodingRule, collapse, ctc_greedy_decode, ctc_prefix_beam_search, ctc_sequence_log_prob, narvl_rule,
)

CUT = DecodingRule(eos="cut")


def one_hot_logits(labels: list[list[int]], size: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(labels), size).float() * 5.0


def decode_path(path, blank, eos, pad=None, merge=True, eos_mode="drop", keep=None):
    """Reference rule, written independently with plain Python on one labeling (NARVL's generator + eval_utils:
    `_collapse` merges repeats first when enabled; `Dictionary.string` then skips blank, pad and EOS)."""
    if merge:
        path = [c for i, c in enumerate(path) if i == 0 or c != path[i - 1]]
    out = []
    for c in path:
        if c == eos and eos_mode == "cut":
            break
        if c in (blank, pad, eos) or (keep is not None and c not in keep):
            continue
        out.append(c)
    return tuple(out)


def brute_force_distribution(log_probs: torch.Tensor, blank: int, eos: int, pad=None, eos_mode="cut") -> dict:
    """P(decoded sequence) for one sample, by enumerating all (V+1)^N labelings."""
    n, v = log_probs.shape
    p = log_probs.double().exp().tolist()
    dist = defaultdict(float)
    for path in itertools.product(range(v), repeat=n):
        dist[decode_path(list(path), blank, eos, pad, eos_mode=eos_mode)] += math.prod(
            p[i][c] for i, c in enumerate(path))
    return dist


LABELS = [
    [3, 3, 6, 3, 4, 4, 2, 5],  # merge, blank separates the repeat, an EOS in the middle
    [6, 6, 6, 6, 6, 6, 6, 6],  # all blank -> empty
    [5, 4, 5, 4, 0, 3, 0, 3],  # no EOS: runs to the end
    [2, 3, 4, 5, 0, 0, 0, 0],  # EOS first
    [3, 1, 3, 6, 6, 4, 2, 2],  # <pad> dropped like a blank
]


def test_narvl_caption_rule_merges_and_drops_eos_wherever_it_occurs():
    blank, eos, pad = 6, 2, 1
    out = ctc_greedy_decode(one_hot_logits(LABELS, 7), blank, eos, pad, narvl_rule(get_task("caption")))
    assert out == [[3, 3, 4, 5], [], [5, 4, 5, 4, 0, 3, 0, 3], [3, 4, 5, 0], [3, 3, 4]]
    assert narvl_rule(get_task("vqa")) == narvl_rule(get_task("caption")) == DecodingRule()  # the default rule
    for row, got in zip(LABELS, out):
        assert tuple(got) == decode_path(row, blank, eos, pad)


def test_cut_rule_stops_at_the_first_eos():
    out = ctc_greedy_decode(one_hot_logits(LABELS, 7), 6, 2, 1, CUT)
    assert out == [[3, 3, 4], [], [5, 4, 5, 4, 0, 3, 0, 3], [], [3, 3, 4]]


def test_grounding_rule_keeps_repeats_and_only_bins():
    # Bins are ids 3, 4, 5; 0 is an ordinary word. Repeats are not merged: "3 3 4 4" is a box with x0=y0, x1=y1.
    blank, eos, pad, bins = 7, 2, 1, [3, 4, 5]
    rule = narvl_rule(get_task("grounding"), bins)
    assert not rule.merge_repeats and rule.keep_ids == frozenset(bins)
    labels = [[3, 3, 4, 4, 2], [3, 0, 4, 5, 5], [3, 7, 4, 2, 5], [0, 0, 0, 2, 2]]
    out = ctc_greedy_decode(one_hot_logits(labels, 8), blank, eos, pad, rule)
    assert out == [[3, 3, 4, 4], [3, 4, 5, 5], [3, 4, 5], []]
    for row, got in zip(labels, out):
        assert tuple(got) == decode_path(row, blank, eos, pad, merge=False, keep=set(bins))


def test_entailment_rule_does_not_merge_and_drops_eos():
    blank, eos, pad = 6, 2, 1
    rule = narvl_rule(get_task("entailment"))
    out = ctc_greedy_decode(one_hot_logits([[2, 3, 3], [6, 4, 2]], 7), blank, eos, pad, rule)
    assert out == [[3, 3], [4]]  # the first token is the answer either way; an EOS before it is skipped


def test_collapse_packs_rows_left_and_pads():
    ids = torch.tensor([[0, 0, 4, 0, 2, 3], [4, 3, 3, 4, 4, 4]])
    tokens, lengths = collapse(ids, blank_id=4, eos_id=2, pad_id=1, rule=CUT)
    assert lengths.tolist() == [2, 1]
    assert tokens.tolist() == [[0, 0, 1, 1, 1, 1], [3, 1, 1, 1, 1, 1]]
    tokens, lengths = collapse(ids, blank_id=4, eos_id=2, pad_id=1)
    assert lengths.tolist() == [3, 1] and tokens[0].tolist() == [0, 0, 3, 1, 1, 1]


@pytest.mark.parametrize("task", ["caption", "grounding", "entailment"])
@pytest.mark.parametrize("eos_mode", ["drop", "cut"])
def test_greedy_matches_reference_rule_on_random_batches(task, eos_mode):
    torch.manual_seed(0)
    logits = torch.randn(64, 10, 6)
    base = narvl_rule(get_task(task), [0, 3, 4])
    rule = DecodingRule(base.merge_repeats, eos_mode, base.keep_ids)
    got = ctc_greedy_decode(logits, blank_id=5, eos_id=2, pad_id=1, rule=rule)
    for row, seq in zip(logits.argmax(-1).tolist(), got):
        assert tuple(seq) == decode_path(row, 5, 2, 1, rule.merge_repeats, eos_mode, base.keep_ids)


@pytest.mark.parametrize("n,v", [(3, 3), (4, 3), (5, 4), (5, 3)])
def test_prefix_beam_search_exact_without_pruning(n, v):
    # V+1 symbols: labels 0..v-1 (label 0 plays EOS), blank = v. No pad in this tiny vocabulary.
    torch.manual_seed(10 * n + v)
    blank, eos = v, 0
    log_probs = (torch.randn(3, n, v + 1, dtype=torch.float64) * 2).log_softmax(-1)
    results = ctc_prefix_beam_search(log_probs, beam_size=10_000, blank_id=blank, eos_id=eos, pad_id=None,
                                     rule=CUT)
    for b in range(3):
        dist = brute_force_distribution(log_probs[b], blank, eos)
        best_seq = max(dist, key=dist.get)
        assert tuple(results[b][0][0]) == best_seq
        # Every returned hypothesis carries its exact total probability.
        for seq, score in results[b]:
            assert abs(math.exp(score) - dist[tuple(seq)]) < 1e-9
        assert abs(sum(math.exp(s) for _, s in results[b]) - 1.0) < 1e-9


def test_prefix_beam_search_small_beam_never_below_greedy():
    torch.manual_seed(1)
    # Without the exact rescoring of the final hypotheses, 2 of 200 such cases fell below greedy at beam 3.
    blank, eos, trials, better = 4, 0, 40, 0
    for _ in range(trials):
        log_probs = (torch.randn(1, 5, 5, dtype=torch.float64) * 1.5).log_softmax(-1)
        dist = brute_force_distribution(log_probs[0], blank, eos)
        beam_best = tuple(ctc_prefix_beam_search(log_probs, 3, blank, eos, pad_id=None, rule=CUT)[0][0][0])
        greedy = tuple(ctc_greedy_decode(log_probs, blank, eos, pad_id=None, rule=CUT)[0])
        assert dist[beam_best] >= dist[greedy] - 1e-12
        better += dist[beam_best] > dist[greedy] + 1e-12
    assert better > 0  # the search does find sequences greedy misses


def test_prefix_beam_search_eos_cut_and_pad_as_blank():
    # Labels: 0 <s>, 1 <pad>, 2 EOS, 3 a, 4 b; blank 5. Confident path "a pad a EOS b" decodes to "a a".
    blank, eos, pad = 5, 2, 1
    logits = one_hot_logits([[3, 1, 3, 2, 4]], 6)
    log_probs = logits.log_softmax(-1)
    dist = brute_force_distribution(log_probs[0].double(), blank, eos, pad)
    hypotheses = ctc_prefix_beam_search(log_probs, beam_size=2, blank_id=blank, eos_id=eos, pad_id=pad, rule=CUT)[0]
    assert hypotheses[0][0] == [3, 3] == ctc_greedy_decode(logits, blank, eos, pad, rule=CUT)[0]
    for seq, score in hypotheses:  # exact scores even under pruning
        assert abs(math.exp(score) - dist[tuple(seq)]) < 1e-6  # float32 inputs


@pytest.mark.parametrize("n,v", [(3, 3), (4, 3), (5, 3)])
def test_prefix_beam_search_exact_with_narvl_eos_drop(n, v):
    """NARVL's rule (EOS dropped everywhere): the search's distribution equals brute-force enumeration."""
    torch.manual_seed(7 * n + v)
    blank, eos = v, 0
    log_probs = (torch.randn(2, n, v + 1, dtype=torch.float64) * 2).log_softmax(-1)
    results = ctc_prefix_beam_search(log_probs, beam_size=10_000, blank_id=blank, eos_id=eos, pad_id=None)
    for b in range(2):
        dist = brute_force_distribution(log_probs[b], blank, eos, eos_mode="drop")
        assert tuple(results[b][0][0]) == max(dist, key=dist.get)
        for seq, score in results[b]:
            assert abs(math.exp(score) - dist[tuple(seq)]) < 1e-9
        assert abs(sum(math.exp(s) for _, s in results[b]) - 1.0) < 1e-9


def test_prefix_beam_search_refuses_rules_without_merging():
    with pytest.raises(ValueError, match="greedily"):
        ctc_prefix_beam_search(torch.zeros(1, 3, 4).log_softmax(-1), 2, 3, 0, None, narvl_rule(get_task("grounding")))


def test_sequence_log_prob_matches_brute_force():
    torch.manual_seed(5)
    blank, eos = 3, 0
    log_probs = (torch.randn(5, 4, dtype=torch.float64) * 2).log_softmax(-1)
    dist = brute_force_distribution(log_probs, blank, eos)
    seqs = [[], [1], [2, 2], [1, 2, 1], [2, 2, 2], [1, 1, 1, 1]]  # the last one cannot fit in 5 queries
    got = ctc_sequence_log_prob(log_probs, seqs, blank, eos).exp().tolist()
    for seq, p in zip(seqs, got):
        assert abs(p - dist.get(tuple(seq), 0.0)) < 1e-12
