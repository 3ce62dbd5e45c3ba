"""Task metrics, each the official implementation's logic: VQA accuracy (GT-Vision-Lab `vqaEval.py`, and OFA's
confidence score for its TSV rows), Acc@0.5 (OFA's `_calculate_ap_score`), accuracy; the caption metrics
(pycocoevalcap) live in `distill.tasks.caption_metrics` and are re-exported here.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np

# re-exported: the caption metrics are part of this module's API
from distill.tasks.caption_metrics import (  # noqa: F401
    caption_metric_implementation,
    caption_scores,
    cider_d,
    ptb_tokenize,
)

VQA_IMPLEMENTATION = "official VQA evaluation (GT-Vision-Lab vqaEval.py, 2021)"
VQA_TSV_IMPLEMENTATION = "OFA's VQA score (confidence of the predicted answer, utils/eval_utils.py)"
GROUNDING_IMPLEMENTATION = "OFA's _calculate_ap_score (float32 IoU >= 0.5, positive intersection)"
ACCURACY_IMPLEMENTATION = "exact-match accuracy (OFA's snli_score)"

# ---------------------------------------------------------------- VQA accuracy (official VQA evaluation rules)

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}  # fmt: skip
# vqaEval.py's keys "Id've", "I'dve", "Im", "Ive" are capitalised while the words are lowercased first: they never
# match, so "im" stays "im" there. Kept as written.
_ARTICLES = {"a", "an", "the"}
_VQA_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
# As written in vqaEval.py: "(?!<=\d)" is a look-AHEAD for the text "<=" + digit (a typo for a look-behind), always true
# before a "."; so the rule is "a period not followed by a digit".
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PERIOD_STRIP_COUNT = int(re.UNICODE)  # vqaEval passes re.UNICODE (32) as sub()'s `count`: at most 32 periods go


def _process_punctuation(text: str) -> str:
    """vqaEval.processPunctuation: each mark is deleted when it touches a space in the ORIGINAL text, or when the text
    holds a digit-comma-digit anywhere; otherwise it becomes a space ("black/white" -> "black white")."""
    out = text
    comma_number = _COMMA_STRIP.search(text) is not None
    for p in _VQA_PUNCT:
        if (p + " " in text or " " + p in text) or comma_number:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def _process_digit_article(text: str) -> str:
    """vqaEval.processDigitArticle: lowercase, split, number words -> digits, drop articles, restore contractions."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def _whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_vqa_answer(answer: str) -> str:
    """vqaEval's full answer normalisation: whitespace, punctuation, periods, number words, articles, contractions
    (the official script applies the steps after the whitespace one only when the humans disagree: see `vqa_score`)."""
    return _process_digit_article(_process_punctuation(_whitespace(answer)))


def vqa_score(prediction: str, answers: Sequence[str], normalize: str = "official") -> float:
    """VQA accuracy (0..1) of one prediction against the human answers (10 in VQA, repeats allowed), as the current
    official `vqaEval.py` computes it:

    - the whitespace step (newline/tab -> space, strip) on every answer and the prediction;
    - only when the humans' answers (after that step) are not all identical: the punctuation, period, number-word,
      article and contraction steps, on each human answer and on the prediction. So with ten "yes", "Yes" or "yes."
      scores 0, while with one "no" among them it scores as "yes";
    - for each human i, acc_i = min(#(other humans j != i whose answer equals the prediction) / 3, 1), and the score
      is the mean over i: with 10 humans and m matches, 0, 0.3, 0.6, 0.9, then 1.0 for m >= 4.

    `normalize="always"` applies the full normalisation whatever the humans say (what many re-implementations do; not
    the official figure). A single human answer scores 1 on an exact match (there is no one to leave out).
    """
    if normalize not in ("official", "always"):
        raise ValueError(f"normalize must be 'official' or 'always', got {normalize!r}")
    if not answers:
        raise ValueError("vqa_score needs at least one human answer")
    pred = _whitespace(prediction)
    gts = [_whitespace(a) for a in answers]
    if normalize == "always" or len(set(gts)) > 1:
        gts = [_process_digit_article(_process_punctuation(g)) for g in gts]
        pred = _process_digit_article(_process_punctuation(pred))
    if len(gts) == 1:
        return float(gts[0] == pred)
    # vqaEval leaves out "item != gtAnsDatum" on answer dicts that differ by answer_id: i.e. exactly the human i.
    accs = [min(1.0, sum(1 for j, g in enumerate(gts) if j != i and g == pred) / 3.0) for i in range(len(gts))]
    return sum(accs) / len(accs)


def tsv_vqa_score(prediction: str, answer_scores: Mapping[str, float]) -> float:
    """OFA's VQA score for its TSV rows: the confidence of the predicted answer string (stripped), 0 when absent
    (`ref_dict.get(hyp, 0)`, no normalisation)."""
    return float(answer_scores.get(prediction.strip(), 0.0))


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[Sequence[str]], normalize: str = "official") -> float:
    """100 x the mean of the unrounded `vqa_score`s (vqaEval rounds only its printed figure, to 2 decimals)."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answer lists")
    if not predictions:
        return 0.0
    return 100.0 * sum(vqa_score(p, a, normalize) for p, a in zip(predictions, answers)) / len(predictions)


# ---------------------------------------------------------------- grounding and entailment

def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two [x0, y0, x1, y1] boxes by OFA's formula (`_calculate_ap_score`), in float32: the intersection
    corners are max/min of the corners and NOT clamped (disjoint boxes can give a positive product of two negative
    sides), areas are w*h of the raw corners, and the denominator has `+ 1e-6`. A hit also needs a positive
    intersection width and height: use `box_hit`, not `box_iou >= 0.5` alone."""
    return _iou_and_sides(a, b)[0]


def _iou_and_sides(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    h, r = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    lo, hi = np.maximum(h[:2], r[:2]), np.minimum(h[2:], r[2:])
    iw, ih = hi[0] - lo[0], hi[1] - lo[1]
    area_h = (h[2] - h[0]) * (h[3] - h[1])
    area_r = (r[2] - r[0]) * (r[3] - r[1])
    inter = iw * ih
    iou = inter / (area_h + area_r - inter + np.float32(1e-6))
    return float(iou), float(iw), float(ih)


def box_hit(a: Sequence[float], b: Sequence[float], threshold: float = 0.5) -> bool:
    """OFA's hit: IoU >= threshold and a positive intersection width and height."""
    iou, iw, ih = _iou_and_sides(a, b)
    return iou >= threshold and iw > 0 and ih > 0


def grounding_accuracy(
    predictions: Sequence[Sequence[float] | None], boxes: Sequence[Sequence[float]], threshold: float = 0.5
) -> float:
    """Acc@0.5 as OFA computes it (`box_hit`), in percent; None (not exactly 4 bins decoded) is a miss."""
    if len(predictions) != len(boxes):
        raise ValueError(f"{len(predictions)} predictions for {len(boxes)} boxes")
    if not predictions:
        return 0.0
    hits = sum(1 for p, b in zip(predictions, boxes) if p is not None and box_hit(p, b, threshold))
    return 100.0 * hits / len(predictions)


def accuracy(predictions: Sequence[object], labels: Sequence[object]) -> float:
    """Percentage of exact matches."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not predictions:
        return 0.0
    return 100.0 * sum(1 for p, l in zip(predictions, labels) if p == l) / len(predictions)

