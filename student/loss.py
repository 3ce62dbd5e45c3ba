"""Query-CTC: the CTC loss of NARVL, taken over the decoder's N query outputs instead of a time axis.

The maths follows the official NARVL criterion (amazon-science/NARVL, `criterions/ofa_nat_loss.py`, loss type
`ctc`): `F.ctc_loss` over the query axis with `reduction='mean'` and `zero_infinity=True`, and fairseq-NAT label
smoothing `(1 - eps) * ctc - eps * mean(log_probs)`. Infeasible samples (a target that cannot fit in N queries)
are counted; as in the official criterion only their CTC term is zeroed (`zero_infinity`), their smoothing term is
kept, and the batch mean still divides by B.

VQA answer confidences enter as the official criterion has them (`ofa_nat_loss.py` `_compute_loss`: `logits =
utils.log_softmax(outputs, dim=-1) * conf`, then CTC and the smoothing term on those): the log-probs are multiplied
by the confidence *before* CTC. This is not a weighting of the loss: CTC then computes `-log sum_a p(a)^c`, a
tempered marginal over alignments (equal to `c * loss` only when one alignment exists), and a confidence of 0 gives
`-log(#alignments)` with zero gradient. The published VQA numbers were trained so.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ctc_required_length", "query_ctc_loss"]


def ctc_required_length(targets: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
    """Minimum number of CTC frames (queries) a target needs: its length plus one blank per adjacent repeat.

    Args:
        targets (torch.Tensor): padded label ids, shape ``(B, L)``; values past ``target_lengths`` are ignored.
        target_lengths (torch.Tensor): real length of each target, shape ``(B,)``.

    Returns:
        torch.Tensor: shape ``(B,)``, int64.
    """
    lengths = target_lengths.to(device=targets.device, dtype=torch.long)
    if targets.size(1) < 2:
        return lengths.clone()
    # A repeat at (i-1, i) counts only when both positions lie inside the target.
    pos = torch.arange(1, targets.size(1), device=targets.device)
    inside = pos.unsqueeze(0) < lengths.unsqueeze(1)
    repeats = ((targets[:, 1:] == targets[:, :-1]) & inside).sum(1)
    return lengths + repeats


def query_ctc_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    target_lengths: torch.Tensor,
    blank_id: int,
    label_smoothing: float = 0.0,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Query-CTC loss over the N query outputs of a NARVL decoder.

    Per sample ``b`` with target length ``L_b`` (clamped to at least 1, as in ``F.ctc_loss``)::

        q[b] = w_b * log_softmax(logits[b])            (w_b = 1 without weights)
        l_b = (1 - eps) * feasible_b * CTC(q[b], target_b) / L_b + eps * mean_{n, v}(-q[b, n, v])
        loss = sum_b l_b / B

    This is exactly the official NARVL ``q = log_softmax(logits) * conf; (1 - eps) * F.ctc_loss(q.transpose(0, 1),
    targets, N, target_lengths, blank=blank_id, reduction='mean', zero_infinity=True) - eps * mean(q)``: an
    infeasible sample's CTC term adds 0 but it still counts in the divisor B, and its smoothing term stays.

    Args:
        logits (torch.Tensor): unnormalised scores over the vocabulary plus the blank, shape ``(B, N, V + 1)``.
            Any float dtype; the loss is computed in float32 at least.
        targets (torch.Tensor): padded target ids ending with EOS, shape ``(B, L)``. The pad value is free (it is
            never read); targets must not contain ``blank_id``.
        target_lengths (torch.Tensor): real length of each target (EOS included), shape ``(B,)``.
        blank_id (int): index of the blank in the last axis of ``logits``.
        label_smoothing (float): ``eps`` above, in [0, 1).
        weights (torch.Tensor | None): per-sample factors of the log-probs (VQA: the answer's confidence, NARVL's
            `conf`), shape ``(B,)``.

    Returns:
        tuple[torch.Tensor, torch.Tensor]: the scalar loss, and the number of infeasible samples (int64 scalar
        tensor, left on the device so that training does not synchronise; ``.item()`` it when logging). A sample is
        infeasible when ``L_b`` plus its number of adjacent repeated labels exceeds N.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, N, V+1), got shape {tuple(logits.shape)}")
    batch, num_queries, _ = logits.shape
    if targets.dim() != 2 or targets.size(0) != batch or target_lengths.shape != (batch,):
        raise ValueError(
            f"targets must be (B, L) and target_lengths (B,) with B={batch}, "
            f"got {tuple(targets.shape)} and {tuple(target_lengths.shape)}"
        )
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")

    # Half-precision logits are lifted to float32 (CTC's log-space sums need it); float64 stays float64.
    log_probs = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)
    if weights is not None:
        log_probs = log_probs * weights.to(device=logits.device, dtype=log_probs.dtype)[:, None, None]
    target_lengths = target_lengths.to(device=logits.device, dtype=torch.long)
    targets = targets.to(logits.device)
    # Padding may hold any value (-100, pad id, ...): make it a valid class so no CTC kernel ever reads it as one.
    in_target = torch.arange(targets.size(1), device=targets.device).unsqueeze(0) < target_lengths.unsqueeze(1)
    targets = targets.masked_fill(~in_target, 0)
    feasible = ctc_required_length(targets, target_lengths) <= num_queries
    input_lengths = torch.full((batch,), num_queries, dtype=torch.long, device=logits.device)

    # Per-sample negative log-likelihood (summed over the target), infinite ones zeroed with their gradient.
    nll = F.ctc_loss(
        log_probs.transpose(0, 1), targets, input_lengths, target_lengths,
        blank=blank_id, reduction="none", zero_infinity=True,
    )
    per_sample = nll / target_lengths.clamp(min=1)
    # where() rather than a product: an infeasible sample's CTC gradient is exactly zero (never inf * 0).
    per_sample = torch.where(feasible, per_sample, torch.zeros_like(per_sample))
    if label_smoothing > 0:
        smooth = -log_probs.mean(dim=(1, 2))
        per_sample = (1.0 - label_smoothing) * per_sample + label_smoothing * smooth
    return per_sample.sum() / batch, (~feasible).sum()
