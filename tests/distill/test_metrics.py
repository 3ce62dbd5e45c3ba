"""Task metrics on hand-worked cases and against pycocoevalcap / brute-force references."""
from itertools import combinations

import pytest
from pycocoevalcap.cider.cider import Cider

from distill.tasks.metrics import (
    accuracy,
    box_hit,
    box_iou,
    cider_d,
    grounding_accuracy,
    normalize_vqa_answer,
    ptb_tokenize,
    tsv_vqa_score,
    vqa_accuracy,
    vqa_score,
)

# ------------------------------------------------------------------ CIDEr-D

RAW_REFS = [
    ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave!", "Man surfing, in the ocean."],
    ["Two dogs play with a red ball.", "Two dogs are playing outside.", "A dog's toy is a ball"],
    ["A plate of food with broccoli.", "Broccoli and rice on a white plate.", "A meal (rice, broccoli) on a plate"],
]
RAW_PREDS = ["A man is surfing a wave.", "Two dogs play with a ball!", "A white plate with broccoli, rice."]


def test_ptb_tokenize_cases():
    assert ptb_tokenize("A man riding a wave.") == "a man riding a wave"
    assert ptb_tokenize("A dog's toy") == "a dog 's toy"  # clitic split as PTB does
    assert ptb_tokenize("Don't stop!") == "do n't stop"
    # brackets are kept, as -lrb- etc. (pycocoevalcap's filter lists them upper-case; the tokenizer lowercases)
    assert ptb_tokenize('a "big" dog (brown), sitting; here: now...') == "a big dog -lrb- brown -rrb- sitting here now"
    assert ptb_tokenize("[a] {b}") == "-lsb- a -rsb- -lcb- b -rcb-"
    assert ptb_tokenize("at 10:30 we can't go") == "at 10:30 we ca n't go"
    assert ptb_tokenize("a t-shirt costs 3.5 dollars") == "a t-shirt costs 3.5 dollars"
    text = "The U.S. flag at 5 o'clock, by the dogs' bowls"
    assert ptb_tokenize(text) == "the u.s. flag at 5 o'clock by the dogs bowls"


def test_cider_matches_pycocoevalcap_on_pretokenised_input():
    # Hand-tokenised (PTB style) versions of the raw captions: what the Java tokenizer would give.
    gts = {
        0: ["a man riding a wave on top of a surfboard", "a surfer rides a large wave", "man surfing in the ocean"],
        1: ["two dogs play with a red ball", "two dogs are playing outside", "a dog 's toy is a ball"],
        2: ["a plate of food with broccoli", "broccoli and rice on a white plate",
            "a meal -lrb- rice broccoli -rrb- on a plate"],
    }
    res = {0: ["a man is surfing a wave"], 1: ["two dogs play with a ball"], 2: ["a white plate with broccoli rice"]}
    expected, _ = Cider().compute_score(gts, res)
    assert cider_d(RAW_PREDS, RAW_REFS) == pytest.approx(100 * expected, abs=1e-9)
    assert expected > 0


def test_cider_identical_candidate_and_refs():
    # No n-gram shared across images, so every idf is > 0: each image scores 10 (x100 -> 1000).
    refs = [["red apple on wooden table"] * 2, ["blue car in garage tonight"] * 2, ["small kitten under blanket"] * 2]
    preds = [r[0] for r in refs]
    assert cider_d(preds, refs) == pytest.approx(1000.0)
    assert cider_d(["completely unrelated words here"] * 3, refs) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        cider_d(preds[:2], refs)


# ------------------------------------------------------------------ VQA accuracy


def _brute_force_vqa(pred, answers):
    """Average over all leave-one-out subsets of min(#matches / 3, 1) (official definition), already normalised."""
    subsets = list(combinations(range(len(answers)), len(answers) - 1))
    return sum(min(1.0, sum(answers[i] == pred for i in s) / 3) for s in subsets) / len(subsets)


@pytest.mark.parametrize("matches,expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_score_by_number_of_matching_humans(matches, expected):
    answers = ["cat"] * matches + [f"other{i}" for i in range(10 - matches)]
    assert vqa_score("cat", answers) == pytest.approx(expected)
    assert vqa_score("cat", answers) == pytest.approx(_brute_force_vqa("cat", answers))


@pytest.mark.parametrize(
    "answer,normalised",
    [
        ("Two", "2"),
        ("a dog", "dog"),
        ("The Dog.", "dog"),
        ("yes!", "yes"),
        ("black/white", "black white"),  # no space next to "/": replaced by a space
        ("black / white", "black white"),  # "/" touches a space: deleted (then split/join collapses the spaces)
        ("a-b c- d", "ab c d"),  # "- " occurs somewhere, so EVERY "-" is deleted
        ("black/white 1,2", "blackwhite 12"),  # a digit-comma-digit anywhere: every mark is deleted
        ("isnt", "isn't"),
        ("im", "im"),  # vqaEval's key is "Im" but words are lowercased first: never matches
        ("2.5", "2.5"),  # a period before a digit stays
        ("dr. who", "dr who"),
        ("1,000", "1000"),
        ("none", "0"),
        ("\tyes\n", "yes"),
        ("." * 40, "." * 8),  # re.UNICODE passed as sub()'s count: only 32 periods are removed
    ],
)
def test_vqa_normalisation_steps(answer, normalised):
    assert normalize_vqa_answer(answer) == normalised


@pytest.mark.parametrize(
    "prediction,humans,expected",
    [
        ("Yes", ["yes"] * 10, 0.0),  # unanimous humans: no normalisation at all, case included
        ("Yes", ["yes"] * 9 + ["no"], 1.0),  # they disagree: both sides normalised
        ("yes.", ["yes"] * 10, 0.0),
        ("yes.", ["yes"] * 8 + ["no"] * 2, 1.0),
        ("two", ["2"] * 10, 0.0),
        ("two", ["2"] * 9 + ["3"], 1.0),
        ("\tyes ", ["yes"] * 10, 1.0),  # the whitespace step always applies
        ("yes", [" yes"] * 5 + ["yes"] * 5, 1.0),  # ... and first: these humans agree
        # 3 humans say it, 7 do not: a matching human sees 2 others (2/3), the rest see 3 (1): (3*2/3 + 7) / 10
        ("black/white 1,2", ["blackwhite 12"] * 3 + ["grey"] * 7, 0.9),
        ("a dog", ["dog"] * 2 + ["cat"] * 8, 0.6),
    ],
)
def test_vqa_score_official_quirks(prediction, humans, expected):
    assert vqa_score(prediction, humans) == pytest.approx(expected)


def test_vqa_always_normalise_is_an_explicit_option():
    assert vqa_score("Yes", ["yes"] * 10, normalize="always") == 1.0
    assert vqa_score("two", ["2"] * 10, normalize="always") == 1.0
    assert vqa_accuracy(["Yes"], [["yes"] * 10], normalize="always") == 100.0
    with pytest.raises(ValueError):
        vqa_score("yes", ["yes"], normalize="sometimes")


def test_vqa_accuracy_is_the_unrounded_mean():
    answers = [["2"] * 10, ["red"] * 1 + ["blue"] * 9, ["yes"] * 10]
    assert vqa_accuracy(["2", "red", "no"], answers) == pytest.approx(100 * (1.0 + 0.3 + 0.0) / 3, abs=1e-12)
    assert vqa_accuracy(["2", "red", "no"], answers) != round(vqa_accuracy(["2", "red", "no"], answers), 2)


def test_tsv_vqa_score_is_the_confidence_of_the_answer():
    scores = {"yes": 1.0, "2": 0.6, "two": 0.3}
    assert tsv_vqa_score("yes", scores) == 1.0
    assert tsv_vqa_score(" 2 ", scores) == 0.6
    assert tsv_vqa_score("Yes", scores) == 0.0  # exact string, as OFA's ref_dict.get(hyp, 0)
    assert tsv_vqa_score("no", scores) == 0.0


# ------------------------------------------------------------------ grounding and entailment


def test_iou_hand_computed():
    assert box_iou([0, 0, 2, 2], [0, 0, 2, 1]) == pytest.approx(0.5, abs=1e-6)  # inter 2, union 4
    assert box_iou([0, 0, 3, 1], [1, 0, 4, 1]) == pytest.approx(0.5, abs=1e-6)
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == pytest.approx(1.0, abs=1e-6)
    assert box_iou([0, 0, 4, 4], [1, 1, 3, 3]) == pytest.approx(4 / 16, abs=1e-6)
    # OFA does not clamp: disjoint on both axes, (-1) * (-1) = 1 "intersection"
    assert box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == pytest.approx(1 / (1 + 1 - 1 + 1e-6))
    assert not box_hit([0, 0, 1, 1], [2, 2, 3, 3])  # ... which the positive-width rule rejects


def _ofa_ap_score(hyps, refs, thresh=0.5):
    """OFA's `_calculate_ap_score` (utils/eval_utils.py), restated with torch, as the independent reference."""
    import torch

    hyps, refs = torch.tensor(hyps, dtype=torch.float32), torch.tensor(refs, dtype=torch.float32)
    lo = torch.where(hyps[:, :2] < refs[:, :2], refs[:, :2], hyps[:, :2])
    hi = torch.where(hyps[:, 2:] < refs[:, 2:], hyps[:, 2:], refs[:, 2:])
    w, h = hi[:, 0] - lo[:, 0], hi[:, 1] - lo[:, 1]
    area_p = (hyps[:, 2] - hyps[:, 0]) * (hyps[:, 3] - hyps[:, 1])
    area_t = (refs[:, 2] - refs[:, 0]) * (refs[:, 3] - refs[:, 1])
    ious = w * h / (area_p + area_t - w * h + 1e-6)
    return ((ious >= thresh) & (w > 0) & (h > 0)).float().tolist()


def test_grounding_accuracy_matches_ofa_formula():
    import random

    rng = random.Random(0)
    gt, preds = [], []
    for _ in range(400):
        x0, y0 = rng.uniform(0, 50), rng.uniform(0, 50)
        box = [x0, y0, x0 + rng.uniform(1, 30), y0 + rng.uniform(1, 30)]
        shift = [rng.uniform(-12, 12) for _ in range(4)]
        gt.append(box)
        preds.append([b + s for b, s in zip(box, shift)])
    preds += [[0, 0, 2, 1], [0, 0, 1, 1], [5, 5, 4, 4]]  # exactly 0.5 (minus the 1e-6), disjoint, inverted
    gt += [[0, 0, 2, 2], [2, 2, 3, 3], [0, 0, 10, 10]]
    hits = _ofa_ap_score(preds, gt)
    assert [box_hit(p, g) for p, g in zip(preds, gt)] == [bool(h) for h in hits]
    assert 0 < sum(hits) < len(hits)
    assert grounding_accuracy(preds + [None], gt + [[0, 0, 1, 1]]) == pytest.approx(100 * sum(hits) / (len(hits) + 1))
    assert grounding_accuracy([[0, 0, 2, 2]], [[0, 0, 2, 2]]) == 100.0


def test_accuracy():
    assert accuracy(["yes", "no", "maybe", None], ["yes", "no", "no", "no"]) == pytest.approx(50.0)
    assert accuracy([], []) == 0.0
