"""CTC decoding of NARVL's query outputs: one-pass greedy (what the paper reports) and CTC prefix beam search.

A labeling of the N queries decodes to a sequence by: merge adjacent repeats, drop blanks (and `<pad>`, which is
never a target), cut at the first EOS (EOS excluded).
"""
from __future__ import annotations

import math
from collections import defaultdict

import torch

__all__ = ["collapse", "ctc_decode", "ctc_greedy_decode", "ctc_prefix_beam_search", "ctc_sequence_log_prob"]

_NEG_INF = -math.inf


def collapse(
    ids: torch.Tensor, blank_id: int, eos_id: int | None = None, pad_id: int | None = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Collapse per-query labels into left-packed sequences, batched with tensor ops.

    Args:
        ids (torch.Tensor): one label per query, shape ``(B, N)``.
        blank_id (int): the CTC blank, dropped after merging repeats.
        eos_id (int | None): when given, each sequence is cut at its first EOS (EOS excluded).
        pad_id (int | None): dropped like the blank (never a target), and the fill value of the output
            (``blank_id`` when None).

    Returns:
        tuple[torch.Tensor, torch.Tensor]: ``tokens`` of shape ``(B, N)``, each row's sequence first and then
        ``pad_id``; and ``lengths`` of shape ``(B,)``.
    """
    # Merge repeats on the raw labels first: "a blank a" stays two a's, "a a" becomes one.
    keep = torch.ones_like(ids, dtype=torch.bool)
    keep[:, 1:] = ids[:, 1:] != ids[:, :-1]
    keep &= ids != blank_id
    if pad_id is not None:
        keep &= ids != pad_id
    if eos_id is not None:
        # Everything from the first kept EOS onwards goes (cumsum > 0 marks it and what follows).
        keep &= ((ids == eos_id) & keep).cumsum(1) == 0
    lengths = keep.sum(1)
    slot = keep.long().cumsum(1) - 1
    tokens = torch.full_like(ids, blank_id if pad_id is None else pad_id)
    rows = torch.arange(ids.size(0), device=ids.device).unsqueeze(1).expand_as(ids)
    tokens[rows[keep], slot[keep]] = ids[keep]
    return tokens, lengths


def ctc_greedy_decode(
    logits: torch.Tensor, blank_id: int, eos_id: int, pad_id: int | None = 1
) -> list[list[int]]:
    """Greedy CTC decoding: argmax per query, merge repeats, drop blanks, cut at EOS.

    Args:
        logits (torch.Tensor): scores (or log-probs) per query, shape ``(B, N, V + 1)``.
        blank_id (int): index of the blank.
        eos_id (int): end of sequence; the output stops before it.
        pad_id (int | None): `<pad>`, dropped if ever predicted (None: an ordinary label).

    Returns:
        list[list[int]]: B token-id lists, EOS excluded.
    """
    tokens, lengths = collapse(logits.argmax(-1), blank_id, eos_id, pad_id)
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
    log_probs: torch.Tensor, beam_size: int, blank_id: int, eos_id: int, pad_id: int | None = 1
) -> list[list[tuple[list[int], float]]]:
    """CTC prefix beam search over the query axis, with equal prefixes merged and the EOS cut.

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

    Returns:
        list[list[tuple[list[int], float]]]: per sample, up to ``beam_size`` ``(ids, log_prob)`` pairs, best first;
        ``log_prob`` is the exact log-probability that the queries decode to ``ids``.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    log_probs = log_probs.detach().to(torch.float64, copy=True)  # a copy: the pad merge below writes in place
    greedy = ctc_greedy_decode(log_probs, blank_id, eos_id, pad_id)
    if pad_id is not None:
        log_probs[..., blank_id] = torch.logaddexp(log_probs[..., blank_id], log_probs[..., pad_id])
        log_probs[..., pad_id] = _NEG_INF
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
    logits: torch.Tensor, blank_id: int, eos_id: int, pad_id: int | None = 1, num_beams: int = 1
) -> list[list[int]]:
    """NARVL's decoding rule, whatever ran the forward (PyTorch or an ONNX export): greedy CTC for ``num_beams=1``
    (the paper's setting), else the best hypothesis of CTC prefix beam search.

    Args:
        logits (torch.Tensor): scores per query, shape ``(B, N, V + 1)``.

    Returns:
        list[list[int]]: B token-id lists, EOS excluded.
    """
    if num_beams == 1:
        return ctc_greedy_decode(logits, blank_id, eos_id, pad_id)
    beams = ctc_prefix_beam_search(logits.float().log_softmax(-1), num_beams, blank_id, eos_id, pad_id)
    return [hypotheses[0][0] for hypotheses in beams]
