"""Query-CTC against F.ctc_loss and against a brute-force sum over every alignment."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from student.loss import ctc_required_length, query_ctc_loss


def brute_force_nll(log_probs: torch.Tensor, target: list[int], blank: int) -> float:
    """-log P(target) by enumerating all (V+1)^N query labelings and collapsing each (float64)."""
    n, v = log_probs.shape
    p = log_probs.double().exp()
    total = 0.0
    for path in itertools.product(range(v), repeat=n):
        collapsed = [c for i, c in enumerate(path) if c != blank and (i == 0 or c != path[i - 1])]
        if collapsed == target:
            total += math.prod(p[i, c].item() for i, c in enumerate(path))
    return -math.log(total) if total > 0 else math.inf


def padded(targets: list[list[int]], pad: int = 99) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(t) for t in targets)
    out = torch.full((len(targets), width), pad, dtype=torch.long)
    for i, t in enumerate(targets):
        out[i, : len(t)] = torch.tensor(t, dtype=torch.long)
    return out, torch.tensor([len(t) for t in targets])


def reference(logits, targets, lengths, blank, reduction):
    lp = logits.log_softmax(-1).transpose(0, 1)
    n = torch.full((logits.size(0),), logits.size(1), dtype=torch.long)
    return F.ctc_loss(lp, targets.clamp(max=blank - 1), n, lengths, blank=blank, reduction=reduction, zero_infinity=True)


def test_matches_f_ctc_loss_mean_and_per_sample():
    torch.manual_seed(0)
    batch, queries, vocab = 6, 9, 12
    blank = vocab  # the appended row, as in NARVL
    logits = torch.randn(batch, queries, vocab + 1) * 3
    targets, lengths = padded([[3, 4, 2], [5, 5, 5, 2], [1, 2], [7, 8, 9, 10, 11, 2], [2], [4, 4, 6, 6, 2]])
    loss, n_inf = query_ctc_loss(logits, targets, lengths, blank)
    ref_mean = reference(logits, targets, lengths, blank, "mean")
    assert n_inf.item() == 0
    torch.testing.assert_close(loss, ref_mean, rtol=0, atol=1e-6)
    # Per sample: feed one sample at a time (B=1, so the mean is that sample's loss / its length).
    ref_none = reference(logits, targets, lengths, blank, "none") / lengths
    for b in range(batch):
        one, _ = query_ctc_loss(logits[b : b + 1], targets[b : b + 1], lengths[b : b + 1], blank)
        torch.testing.assert_close(one, ref_none[b], rtol=0, atol=1e-6)
    # The pad value is never read.
    other_pad = targets.masked_fill(targets == 99, -100)
    assert torch.equal(query_ctc_loss(logits, other_pad, lengths, blank)[0], loss)


@pytest.mark.parametrize(
    "target",
    [[0, 2], [1, 1, 2], [1, 1], [0, 1, 0, 2], [2], [1, 0, 1, 0, 2]],
    ids=["plain", "repeat", "repeat-noeos", "aba", "eos-only", "fits-exactly"],
)
def test_matches_brute_force_over_alignments(target):
    torch.manual_seed(len(target))
    queries, vocab = 5, 3  # ids 0..2 are labels (2 = EOS), 3 = blank
    blank = vocab
    logits = torch.randn(1, queries, vocab + 1, dtype=torch.float64) * 2
    targets, lengths = padded([target])
    loss, n_inf = query_ctc_loss(logits, targets, lengths, blank)
    expected = brute_force_nll(logits[0].log_softmax(-1), target, blank) / len(target)
    assert n_inf.item() == 0
    assert abs(loss.item() - expected) < 1e-12  # float64 throughout


def test_repeated_label_needs_a_blank_between():
    # "a a EOS" needs 4 queries; with 3 it is infeasible, "a b EOS" fits in 3.
    blank = 3
    logits = torch.randn(2, 3, 4, dtype=torch.float64)
    targets, lengths = padded([[1, 1, 2], [1, 0, 2]])
    per = [brute_force_nll(logits[b].log_softmax(-1), targets[b].tolist(), blank) for b in range(2)]
    assert per[0] == math.inf and per[1] < math.inf
    loss, n_inf = query_ctc_loss(logits, targets, lengths, blank)
    assert n_inf.item() == 1
    # The infeasible sample adds 0 but still counts in the divisor B, as F.ctc_loss 'mean' with zero_infinity.
    assert abs(loss.item() - per[1] / 3 / 2) < 1e-12
    torch.testing.assert_close(loss.float(), reference(logits.float(), targets, lengths, blank, "mean"), rtol=0, atol=1e-6)


def test_required_length_counts_repeats_inside_target_only():
    targets = torch.tensor([[5, 5, 2, 2, 2], [1, 2, 3, 3, 3], [4, 4, 4, 4, 2]])
    lengths = torch.tensor([3, 3, 5])
    # row 0: 5 5 2 -> 3 + 1; row 1: 1 2 3 -> 3 (the 3 3 3 tail is padding); row 2: 4 4 4 4 2 -> 5 + 3
    assert ctc_required_length(targets, lengths).tolist() == [4, 3, 8]


def test_infeasible_samples_counted_zeroed_and_gradients_finite():
    torch.manual_seed(1)
    blank = 6
    logits = torch.randn(4, 4, 7, requires_grad=True)
    targets, lengths = padded([[1, 2], [3, 3, 3, 2], [1, 2, 3, 4, 2], [4, 2]])
    loss, n_inf = query_ctc_loss(logits, targets, lengths, blank)
    assert n_inf.item() == 2
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    # Without smoothing only the CTC term exists: no gradient reaches an infeasible sample.
    assert logits.grad[1].abs().max() == 0 and logits.grad[2].abs().max() == 0
    assert logits.grad[0].abs().max() > 0 and logits.grad[3].abs().max() > 0


def test_infeasible_sample_keeps_its_smoothing_term_as_the_official_criterion():
    """NARVL's `ofa_nat_loss`: `(1 - eps) * F.ctc_loss(..., 'mean', zero_infinity=True) - eps * mean(log_probs)`;
    `zero_infinity` zeroes an infeasible sample's CTC term only, the smoothing mean still covers every sample."""
    torch.manual_seed(1)
    blank, eps = 6, 0.1
    logits = torch.randn(4, 4, 7, requires_grad=True)
    targets, lengths = padded([[1, 2], [3, 3, 3, 2], [1, 2, 3, 4, 2], [4, 2]])
    loss, n_inf = query_ctc_loss(logits, targets, lengths, blank, label_smoothing=eps)
    official = (1 - eps) * reference(logits, targets, lengths, blank, "mean") - eps * logits.log_softmax(-1).mean()
    assert n_inf.item() == 2
    torch.testing.assert_close(loss, official, rtol=0, atol=1e-6)
    loss.backward()
    # The infeasible samples' gradient is the smoothing term's alone: eps/B * d(-mean_{n,v} log p)/d logits.
    smooth_only = logits.detach()[1:3].clone().requires_grad_(True)
    (eps / 4 * -smooth_only.log_softmax(-1).mean(dim=(1, 2)).sum()).backward()
    torch.testing.assert_close(logits.grad[1:3], smooth_only.grad, rtol=0, atol=1e-7)
    assert smooth_only.grad.abs().max() > 0


def test_label_smoothing_is_fairseq_nat_form():
    torch.manual_seed(2)
    blank, eps = 8, 0.1
    logits = torch.randn(3, 6, 9)
    targets, lengths = padded([[1, 2], [3, 4, 5, 2], [6, 6, 2]])
    loss, _ = query_ctc_loss(logits, targets, lengths, blank, label_smoothing=eps)
    # Official NARVL: nll * (1 - eps) - mean(log_probs) * eps, the mean over batch, queries and vocabulary.
    official = (1 - eps) * reference(logits, targets, lengths, blank, "mean") - eps * logits.log_softmax(-1).mean()
    torch.testing.assert_close(loss, official, rtol=0, atol=1e-6)
    # A uniform distribution minimises the smoothing term: log(V + 1).
    uniform, _ = query_ctc_loss(torch.zeros(1, 6, 9), targets[:1], lengths[:1], blank, label_smoothing=0.999999)
    assert abs(uniform.item() - math.log(9)) < 1e-4


def test_vqa_confidence_scales_the_log_probs_before_ctc_as_narvl():
    """NARVL's criterion, amazon-science/NARVL@1ed7fc3 `criterions/ofa_nat_loss.py`: line 84 `logits =
    utils.log_softmax(outputs, dim=-1) * conf` (conf = `sample['conf'][:, None, None]`, line 159), lines 98-104
    `F.ctc_loss(logits, targets, logits_lengths, target_lengths, blank, reduction='mean', zero_infinity=True)` and
    lines 131-133 `nll_loss * (1 - label_smoothing) - mean_ds(logits) * label_smoothing` on the same scaled
    log-probs. Computed here directly with F.ctc_loss; a loss weighting (the project's earlier rule) differs."""
    torch.manual_seed(3)
    blank, eps = 5, 0.1
    logits = torch.randn(3, 6, 6)
    targets, lengths = padded([[1, 2], [3, 4, 2], [0, 2]])
    conf = torch.tensor([1.0, 0.3, 0.0])
    loss, _ = query_ctc_loss(logits, targets, lengths, blank, label_smoothing=eps, weights=conf)
    scaled = logits.log_softmax(-1) * conf[:, None, None]
    n = torch.full((3,), 6, dtype=torch.long)
    ctc = F.ctc_loss(scaled.transpose(0, 1), targets.clamp(max=blank - 1), n, lengths, blank=blank, reduction="mean",
                     zero_infinity=True)
    official = ctc * (1 - eps) - scaled.mean() * eps
    torch.testing.assert_close(loss, official, rtol=0, atol=1e-6)
    per = torch.stack([query_ctc_loss(logits[b: b + 1], targets[b: b + 1], lengths[b: b + 1], blank,
                                      label_smoothing=eps)[0] for b in range(3)])
    assert abs(loss.item() - ((per * conf).sum() / 3).item()) > 1e-3  # not a per-sample weighting
    # A confidence of 0: every alignment has probability 1, so the CTC term is -log(#alignments) < 0.
    zero, _ = query_ctc_loss(logits[2:], targets[2:], lengths[2:], blank, weights=conf[2:])
    assert zero.item() < 0


def test_half_precision_logits_are_computed_in_float32():
    torch.manual_seed(4)
    logits = torch.randn(2, 5, 6)
    targets, lengths = padded([[1, 2], [3, 2]])
    full, _ = query_ctc_loss(logits, targets, lengths, 5)
    half, _ = query_ctc_loss(logits.bfloat16(), targets, lengths, 5)
    assert half.dtype == torch.float32
    assert abs(full.item() - half.item()) < 0.05
