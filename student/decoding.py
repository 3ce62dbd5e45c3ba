"""CTC decoding of NARVL's query outputs: one-pass greedy (what the paper reports) and CTC prefix beam search.

A labeling of the N queries (one argmax label per query) becomes a token sequence by a per-task `DecodingRule`,
NARVL's own (amazon-science/NARVL, read at 1ed7fc3):

* caption and VQA merge adjacent repeated labels, then drop blanks, `<pad>` and every EOS wherever it occurs:
  their `IterativeRefinementGenerator` is built with `collapse_repetition=True` (`tasks/mm_tasks/caption.py`,
  `vqa_gen.py`; `--iter-decode-collapse-repetition` in `run_scripts/*_nat/evaluate_*.sh`), the blank symbol is added
  with `ignore_in_string=True` (`tasks/ofa_task.py`), and `utils/eval_utils.py` turns tokens into text with fairseq's
  `Dictionary.string`, which skips EOS (and BOS) at any position rather than stopping at the first one;
* grounding (`eval_nat_refcoco`) does not merge repeats (`collapse_repetition=False` in `tasks/mm_tasks/refcoco.py`),
  keeps only the `<bin_k>` tokens of the labeling (every other token is ignored) and yields a box only when exactly
  4 bins remain;
* entailment (`eval_nat_snli_ve`) does not merge repeats either (`collapse_repetition=False` in `snli_ve.py`), drops
  blanks and EOS everywhere, and takes the first remaining token as the answer (`distill.tasks.entailment`).

`DecodingRule(eos="cut")` (stop at the first EOS) is kept for callers that want the plain CTC-with-terminator
reading; no task uses it.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

import torch


__all__ = ["DecodingRule", "narvl_rule", "collapse", "ctc_decode", "ctc_greedy_decode",
           "ctc_prefix_beam_search", "ctc_sequence_log_prob", "ctc_greedy_path_log_prob"]

_NEG_INF = -math.inf


@dataclass(frozen=True)
class DecodingRule:
    """How one labeling of the N queries becomes a token sequence (see the module docstring for NARVL's per task)."""

    merge_repeats: bool = True
    """Merge adjacent equal labels before anything is dropped (CTC collapse: "a a" -> "a", "a blank a" -> "a a")."""
    eos: str = "drop"
    """`drop`: every EOS is removed wherever it occurs (NARVL); `cut`: the sequence stops at the first EOS."""
    keep_ids: frozenset[int] | None = None
    """When set, only these labels are kept and every other one is ignored (grounding: the `<bin_k>` ids)."""

    def __post_init__(self):
        if self.eos not in ("drop", "cut"):
            raise ValueError(f"DecodingRule.eos must be 'drop' or 'cut', got {self.eos!r}")


def narvl_rule(task: Any, bin_ids: Sequence[int] | None = None) -> DecodingRule:
    """NARVL's decoding rule of `task` (a `Task`): merge repeats or not (`Task.ctc_merge_repeats`); a box task
    (grounding) keeps only `bin_ids` (the `<bin_k>` labels) when given."""
    keep = frozenset(int(i) for i in bin_ids) if task.answer_space == "box" and bin_ids is not None else None
    return DecodingRule(merge_repeats=task.ctc_merge_repeats, keep_ids=keep)


def ctc_greedy_path_log_prob(logits: torch.Tensor) -> torch.Tensor:
    """Log-prob of the greedy CTC path (each query's argmax label), shape ``(B,)`` from logits ``(B, N, V + 1)``:
    the score NARVL's one-pass prediction is reported with."""
    return logits.float().log_softmax(-1).max(-1).values.sum(-1)


def collapse(
    ids: torch.Tensor, blank_id: int, eos_id: int | None = None, pad_id: int | None = 1,
    rule: DecodingRule = DecodingRule(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Collapse per-query labels into left-packed sequences by `rule`, batched with tensor ops.

    Args:
        ids (torch.Tensor): one label per query, shape ``(B, N)``.
        blank_id (int): the CTC blank, dropped (after merging repeats when the rule merges).
        eos_id (int | None): EOS, dropped everywhere or cut at (``rule.eos``); None: an ordinary label.
        pad_id (int | None): dropped like the blank (never a target), and the fill value of the output
            (``blank_id`` when None).
        rule (DecodingRule): merge or not, EOS drop or cut, kept ids (default: NARVL's caption rule).

    Returns:
        tuple[torch.Tensor, torch.Tensor]: ``tokens`` of shape ``(B, N)``, each row's sequence first and then
        ``pad_id``; and ``lengths`` of shape ``(B,)``.
    """
    keep = torch.ones_like(ids, dtype=torch.bool)
    if rule.merge_repeats:
        # Merge repeats on the raw labels first: "a blank a" stays two a's, "a a" becomes one.
        keep[:, 1:] = ids[:, 1:] != ids[:, :-1]
    keep &= ids != blank_id
    if pad_id is not None:
        keep &= ids != pad_id
    if eos_id is not None:
        if rule.eos == "cut":
            # Everything from the first kept EOS onwards goes (cumsum > 0 marks it and what follows).
            keep &= ((ids == eos_id) & keep).cumsum(1) == 0
        else:
            keep &= ids != eos_id
    if rule.keep_ids is not None:
        allowed = torch.tensor(sorted(rule.keep_ids), dtype=ids.dtype, device=ids.device)
        keep &= torch.isin(ids, allowed)
    lengths = keep.sum(1)
    slot = keep.long().cumsum(1) - 1
    tokens = torch.full_like(ids, blank_id if pad_id is None else pad_id)
    rows = torch.arange(ids.size(0), device=ids.device).unsqueeze(1).expand_as(ids)
    tokens[rows[keep], slot[keep]] = ids[keep]
    return tokens, lengths


def ctc_greedy_decode(
    logits: torch.Tensor, blank_id: int, eos_id: int, pad_id: int | None = 1, rule: DecodingRule = DecodingRule()
) -> list[list[int]]:
    """Greedy CTC decoding: argmax per query, then `rule` (default NARVL's caption/VQA rule: merge repeats, drop
    blanks, `<pad>` and every EOS).

    Args:
        logits (torch.Tensor): scores (or log-probs) per query, shape ``(B, N, V + 1)``.
        blank_id (int): index of the blank.
        eos_id (int): end of sequence, never in the output.
        pad_id (int | None): `<pad>`, dropped if ever predicted (None: an ordinary label).
        rule (DecodingRule): the task's rule (`narvl_rule(task)`).

    Returns:
        list[list[int]]: B token-id lists, EOS excluded.
    """
    tokens, lengths = collapse(logits.argmax(-1), blank_id, eos_id, pad_id, rule)
    # The only Python-level step: the ragged split.
    return [row[:n] for row, n in zip(tokens.tolist(), lengths.tolist())]


def _logadd(a: float, b: float) -> float:
    if a == _NEG_INF:
        return b
    if b == _NEG_INF:
        return a
    hi, lo = (a, b) if a > b else (b, a)
    return hi + math.log1p(math.exp(lo - hi))


def _beam_search_one(lp, beam_size: int, blank_id: int, eos_id: int, top: list[list[int]]):
    # Open prefixes (no EOS yet) -> (log P ending in blank, log P ending in a label). Finished -> log P(first EOS).
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, _NEG_INF)}
    finished: dict[tuple[int, ...], float] = defaultdict(lambda: _NEG_INF)
    for frame, candidates in zip(lp, top):
        nxt: dict[tuple[int, ...], list[float]] = defaultdict(lambda: [_NEG_INF, _NEG_INF])
        for prefix, (pb, pnb) in beams.items():
            total = _logadd(pb, pnb)
            stay = nxt[prefix]
            stay[0] = _logadd(stay[0], total + frame[blank_id])
            last = prefix[-1] if prefix else None
            if last is not None:
                # The same label again without a blank between merges into the prefix.
                stay[1] = _logadd(stay[1], pnb + frame[last])
            for c in candidates:
                if c == blank_id:
                    continue
                if c == eos_id:
                    finished[prefix] = _logadd(finished[prefix], total + frame[c])
                    continue
                # After a blank a repeated label is a new token; otherwise only distinct labels extend.
                mass = pb if c == last else total
                ext = nxt[prefix + (c,)]
                ext[1] = _logadd(ext[1], mass + frame[c])
        ranked = sorted(nxt.items(), key=lambda kv: _logadd(*kv[1]), reverse=True)[:beam_size]
        beams = {k: (v[0], v[1]) for k, v in ranked}
    # A sequence is output either by its first EOS or by running out of queries without one.
    scores = dict(finished)
    for prefix, (pb, pnb) in beams.items():
        scores[prefix] = _logadd(scores.get(prefix, _NEG_INF), _logadd(pb, pnb))
    best = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)[:beam_size]
    return [(list(prefix), score) for prefix, score in best]


def ctc_sequence_log_prob(
    log_probs: torch.Tensor, sequences: list[list[int]], blank_id: int, eos_id: int
) -> torch.Tensor:
    """Exact log-probability that one sample's queries decode to each given sequence (EOS cut included).

    ``P(s) = alpha_N(s) + sum_{t<N} alpha_t(s) * p_{t+1}(EOS)``, where ``alpha_t(s)`` is the CTC probability that
    the first t queries collapse to exactly ``s``; ``F.ctc_loss`` gives every ``alpha_t`` at once when the sample
    is repeated with input lengths 1..N.

    Args:
        log_probs (torch.Tensor): log-probabilities of one sample, shape ``(N, V + 1)``.
        sequences (list[list[int]]): K candidate sequences without EOS, blank or pad.
        blank_id (int): index of the blank.
        eos_id (int): end of sequence.

    Returns:
        torch.Tensor: shape ``(K,)``, same dtype as ``log_probs``.
    """
    n = log_probs.size(0)
    k = len(sequences)
    width = max(1, max(len(seq) for seq in sequences))
    targets = torch.zeros(k, width, dtype=torch.long, device=log_probs.device)
    for i, seq in enumerate(sequences):
        targets[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    target_lengths = torch.tensor([len(seq) for seq in sequences], device=log_probs.device)
    steps = torch.arange(1, n + 1, device=log_probs.device)
    # Row (i, t) of the batch: candidate i over the first t queries.
    nll = torch.nn.functional.ctc_loss(
        log_probs.unsqueeze(1).expand(n, k * n, -1),
        targets.repeat_interleave(n, 0),
        steps.repeat(k),
        target_lengths.repeat_interleave(n),
        blank=blank_id,
        reduction="none",
    ).view(k, n)
    log_alpha = torch.cat([torch.where(target_lengths == 0, 0.0, _NEG_INF).to(nll).unsqueeze(1), -nll], dim=1)
    # Either the queries run out on exactly s, or the first EOS follows s at query t + 1.
    terms = torch.cat([log_alpha[:, :n] + log_probs[:, eos_id].unsqueeze(0), log_alpha[:, n:]], dim=1)
    return terms.logsumexp(1)


def ctc_prefix_beam_search(
    log_probs: torch.Tensor, beam_size: int, blank_id: int, eos_id: int, pad_id: int | None = 1,
    rule: DecodingRule = DecodingRule(),
) -> list[list[tuple[list[int], float]]]:
    """CTC prefix beam search over the query axis, with equal prefixes merged; EOS dropped or cut by `rule`.

    With NARVL's rule (merge, drop EOS everywhere) EOS behaves exactly like a second blank (it is dropped after the
    merge and separates repeats), so its mass is added to the blank's and no hypothesis ever finishes early. With
    ``eos="cut"`` a prefix whose next label is EOS is finished. Rules that do not merge repeats (grounding,
    entailment) are not CTC collapses and have no prefix search: NARVL decodes them greedily.

    Each open prefix carries the probability of the labelings that reach it ending in a blank and ending in a
    label; a prefix whose next label is EOS is finished and keeps its mass. Per query only the ``beam_size`` most
    probable labels are tried as extensions (plus the blank and each prefix's last label), so that the cost does
    not grow with the vocabulary. Pruning makes the search's own scores lower bounds, and can drop the greedy
    sequence; so the final hypotheses and the greedy sequence are rescored exactly (``ctc_sequence_log_prob``)
    and ranked on that: the best hypothesis is never less probable than greedy's.

    Args:
        log_probs (torch.Tensor): log-probabilities per query, shape ``(B, N, V + 1)``.
        beam_size (int): open prefixes kept per query, and hypotheses returned per sample.
        blank_id (int): index of the blank.
        eos_id (int): end of sequence (excluded from the output).
        pad_id (int | None): `<pad>`; merged into the blank, since greedy decoding drops it exactly like a blank.
        rule (DecodingRule): must merge repeats; ``keep_ids`` is not supported.

    Returns:
        list[list[tuple[list[int], float]]]: per sample, up to ``beam_size`` ``(ids, log_prob)`` pairs, best first;
        ``log_prob`` is the exact log-probability that the queries decode to ``ids``.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if not rule.merge_repeats or rule.keep_ids is not None:
        raise ValueError("CTC prefix beam search needs a rule that merges repeats and keeps every label "
                         "(caption, VQA); grounding and entailment decode greedily, as NARVL does")
    log_probs = log_probs.detach().to(torch.float64, copy=True)  # a copy: the merges below write in place
    greedy = ctc_greedy_decode(log_probs, blank_id, eos_id, pad_id, rule)
    # Labels that greedy decoding drops exactly like a blank join the blank's mass.
    for like_blank in (pad_id, eos_id if rule.eos == "drop" else None):
        if like_blank is not None:
            log_probs[..., blank_id] = torch.logaddexp(log_probs[..., blank_id], log_probs[..., like_blank])
            log_probs[..., like_blank] = _NEG_INF
    k = min(beam_size, log_probs.size(-1))
    top = log_probs.topk(k, dim=-1).indices.tolist()
    results = []
    # A NumPy view per sample, not a list: only a few entries per query are read, and V can be ~60k.
    for b, (sample, sample_top) in enumerate(zip(log_probs.cpu().numpy(), top)):
        found = _beam_search_one(sample, beam_size, blank_id, eos_id, sample_top)
        candidates = [seq for seq, _ in found]
        if greedy[b] not in candidates:
            candidates.append(greedy[b])
        exact = ctc_sequence_log_prob(log_probs[b], candidates, blank_id, eos_id).tolist()
        ranked = sorted(zip(candidates, exact), key=lambda pair: pair[1], reverse=True)
        results.append(ranked[:beam_size])
    return results


def ctc_decode(
    logits: torch.Tensor, blank_id: int, eos_id: int, pad_id: int | None = 1, num_beams: int = 1,
    rule: DecodingRule = DecodingRule(),
) -> list[list[int]]:
    """NARVL's decoding, whatever ran the forward (PyTorch or an ONNX export): greedy CTC for ``num_beams=1``
    (the paper's setting), else the best hypothesis of CTC prefix beam search; `rule` is the task's (`narvl_rule`).

    Args:
        logits (torch.Tensor): scores per query, shape ``(B, N, V + 1)``.

    Returns:
        list[list[int]]: B token-id lists, EOS excluded.
    """
    if num_beams == 1:
        return ctc_greedy_decode(logits, blank_id, eos_id, pad_id, rule)
    beams = ctc_prefix_beam_search(logits.float().log_softmax(-1), num_beams, blank_id, eos_id, pad_id, rule)
    return [hypotheses[0][0] for hypotheses in beams]
