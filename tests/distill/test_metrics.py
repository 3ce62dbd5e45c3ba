"""Task metrics on hand-worked cases and against pycocoevalcap / brute-force references."""
from itertools import combinations

import pytest
from pycocoevalcap.cider.cider import Cider

from distill.tasks.metrics import (
    accuracy,
    box_iou,
    cider_d,
    grounding_accuracy,
    normalize_vqa_answer,
    ptb_tokenize,
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
    assert ptb_tokenize('a "big" dog (brown), sitting; here: now...') == "a big dog brown sitting here now"
    assert ptb_tokenize("a t-shirt costs 3.5 dollars") == "a t-shirt costs 3.5 dollars"
    text = "The U.S. flag at 5 o'clock, by the dogs' bowls"
    assert ptb_tokenize(text) == "the u.s. flag at 5 o'clock by the dogs bowls"


def test_cider_matches_pycocoevalcap_on_pretokenised_input():
    # Hand-tokenised (PTB style) versions of the raw captions: what the Java tokenizer would give.
    gts = {
        0: ["a man riding a wave on top of a surfboard", "a surfer rides a large wave", "man surfing in the ocean"],
        1: ["two dogs play with a red ball", "two dogs are playing outside", "a dog 's toy is a ball"],
        2: ["a plate of food with broccoli", "broccoli and rice on a white plate", "a meal rice broccoli on a plate"],
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
    "prediction,human,normalised",
    [
        ("Two", "2", "2"),
        ("a dog", "dog", "dog"),
        ("The Dog.", "dog", "dog"),
        ("yes!", "yes", "yes"),
        ("black/white", "black white", "black white"),
        ("isnt", "isn't", "isn't"),
        ("2.5", "2.5", "2.5"),
        ("1,000", "1000", "1000"),
        ("none", "0", "0"),
    ],
)
def test_vqa_normalisation(prediction, human, normalised):
    assert normalize_vqa_answer(prediction) == normalised
    assert vqa_score(prediction, [human] * 10) == 1.0


def test_vqa_accuracy_mean():
    answers = [["2"] * 10, ["red"] * 2 + ["blue"] * 8, ["yes"] * 10]
    assert vqa_accuracy(["two", "red", "no"], answers) == pytest.approx(100 * (1.0 + 0.6 + 0.0) / 3)


# ------------------------------------------------------------------ grounding and entailment


def test_iou_hand_computed():
    assert box_iou([0, 0, 2, 2], [0, 0, 2, 1]) == pytest.approx(0.5)  # inter 2, union 4
    assert box_iou([0, 0, 3, 1], [1, 0, 4, 1]) == pytest.approx(0.5)  # inter 2, union 4
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0
    assert box_iou([0, 0, 4, 4], [1, 1, 3, 3]) == pytest.approx(4 / 16)


def test_grounding_accuracy_at_half_iou():
    gt = [[0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 2, 2]]
    preds = [[0, 0, 2, 1], [0, 0, 2, 0.99], None, [0, 0, 2, 2]]  # exactly 0.5 hits, just below misses, None misses
    assert grounding_accuracy(preds, gt) == pytest.approx(50.0)


def test_accuracy():
    assert accuracy(["yes", "no", "maybe", None], ["yes", "no", "no", "no"]) == pytest.approx(50.0)
    assert accuracy([], []) == 0.0
