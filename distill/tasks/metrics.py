"""Task metrics: CIDEr-D (pycocoevalcap), VQA accuracy, Acc@0.5 IoU, accuracy.

All functions are pure Python over predictions and references, so they run anywhere (no Java, no model).
"""
from __future__ import annotations

import re
from typing import Sequence

from pycocoevalcap.cider.cider import Cider

# ---------------------------------------------------------------- captions: PTB-style tokenisation + CIDEr-D

# Tokens pycocoevalcap's PTBTokenizer removes after tokenising (brackets appear there as -LRB- etc.).
_PTB_DROP = {"''", "'", "``", "`", '"', "(", ")", "{", "}", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
# Stanford PTB splits clitics off the word they attach to: "dog's" -> "dog 's", "don't" -> "do n't".
_CLITIC = re.compile(r"(?i)(\w)(n't|'s|'re|'ve|'ll|'d|'m)\b")
_PTB_TOKEN = re.compile(
    r"n't|'(?:s|re|ve|ll|d|m)\b"  # split-off clitics
    r"|\d+(?:[.,]\d+)+"  # numbers with decimal / thousands separators: 3.5, 1,000
    r"|(?:[a-z]\.){2,}"  # abbreviations keep their periods: u.s.
    r"|\w+(?:[-'&/]\w+)*"  # words, keeping inner hyphens, apostrophes, slashes, ampersands (t-shirt, o'clock, w/o)
    r"|\.\.\.|--|``|''"
    r"|\S"  # any other single symbol
)


def ptb_tokenize(text: str) -> str:
    """Lowercase, PTB-tokenise and drop punctuation, as pycocoevalcap's (Java) PTBTokenizer does for CIDEr.

    A pure-Python approximation of Stanford's PTBTokenizer (`-lowerCase`) followed by pycocoevalcap's punctuation
    filter. It agrees on ordinary captions (words, clitics, numbers, punctuation); exotic tokens (URLs, emoticons)
    may split differently.
    """
    text = text.lower().replace("\n", " ").replace("\t", " ")
    text = text.replace("[", " -lsb- ").replace("]", " -rsb- ")  # PTB escapes square brackets and keeps them
    text = _CLITIC.sub(r"\1 \2", text)
    tokens = [t for t in _PTB_TOKEN.findall(text) if t not in _PTB_DROP]
    return " ".join(tokens)


def cider_d(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus CIDEr-D (pycocoevalcap `Cider`: n=4, sigma=6, clipped, x10) on PTB-tokenised text, times 100.

    The x100 gives the figure papers report (e.g. OFA-base 138.2). The idf comes from the references of the
    evaluated set, so a corpus of one image scores 0 by construction.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference lists")
    if not predictions:
        return 0.0
    gts = {i: [ptb_tokenize(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [ptb_tokenize(p)] for i, p in enumerate(predictions)}
    for i, refs in gts.items():
        if not refs:
            raise ValueError(f"prediction {i} has no reference caption")
    score, _ = Cider().compute_score(gts, res)
    return 100.0 * float(score)


# ---------------------------------------------------------------- VQA accuracy (official VQA evaluation rules)

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "id've": "i'd've", "i'dve": "i'd've", "im": "i'm", "ive": "i've",
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
_ARTICLES = {"a", "an", "the"}
_VQA_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD_STRIP = re.compile(r"\.(?!\d)")  # a period not followed by a digit (keeps 2.5)
_COMMA_NUMBER = re.compile(r"(\d)(,)(\d)")


def _process_punctuation(text: str) -> str:
    out = text
    for p in _VQA_PUNCT:
        # As the official code: a mark next to a space (or any text with "1,000"-style numbers) is deleted,
        # otherwise it becomes a space ("black/white" -> "black white").
        if (p + " " in text or " " + p in text) or _COMMA_NUMBER.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def _process_digit_article(text: str) -> str:
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def normalize_vqa_answer(answer: str) -> str:
    """Official VQA answer normalisation: whitespace, punctuation, number words -> digits, articles, contractions."""
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(answer))


def vqa_score(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy of one prediction against the human answers (usually 10, repeats allowed).

    Official form: for each human i, acc_i = min(#(other humans j != i answering the prediction) / 3, 1), and the
    score is the mean over i (the average over all 10-choose-9 subsets). With 10 answers and m matching humans
    this gives 0, 0.3, 0.6, 0.9, then 1.0 for m >= 4 (the plain min(m / 3, 1) would give 0, 1/3, 2/3, 1).

    One deliberate deviation: the official script normalises answers only when the humans disagree, so "Two"
    scores 0 against ten "2"s there; we always normalise both sides, as most re-implementations do.
    """
    if not answers:
        raise ValueError("vqa_score needs at least one human answer")
    pred = normalize_vqa_answer(prediction)
    gts = [normalize_vqa_answer(a) for a in answers]
    if len(gts) == 1:  # a single reference: no subsets to leave out
        return float(gts[0] == pred)
    accs = []
    for i in range(len(gts)):
        matches = sum(1 for j, g in enumerate(gts) if j != i and g == pred)
        accs.append(min(1.0, matches / 3.0))
    return sum(accs) / len(accs)


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    """Mean `vqa_score` over questions, times 100."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answer lists")
    if not predictions:
        return 0.0
    return 100.0 * sum(vqa_score(p, a) for p, a in zip(predictions, answers)) / len(predictions)


# ---------------------------------------------------------------- grounding and entailment

def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two [x0, y0, x1, y1] boxes (continuous coordinates, area = w*h as OFA computes it)."""
    ix0, iy0 = max(a[0], b[0]), max(a[1], b[1])
    ix1, iy1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, ix1 - ix0) * max(0.0, iy1 - iy0)
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def grounding_accuracy(
    predictions: Sequence[Sequence[float] | None], boxes: Sequence[Sequence[float]], threshold: float = 0.5
) -> float:
    """Acc@0.5: percentage of predictions with IoU >= threshold (OFA counts equality as a hit); None is a miss."""
    if len(predictions) != len(boxes):
        raise ValueError(f"{len(predictions)} predictions for {len(boxes)} boxes")
    if not predictions:
        return 0.0
    hits = sum(1 for p, b in zip(predictions, boxes) if p is not None and box_iou(p, b) >= threshold)
    return 100.0 * hits / len(predictions)


def accuracy(predictions: Sequence[object], labels: Sequence[object]) -> float:
    """Percentage of exact matches."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not predictions:
        return 0.0
    return 100.0 * sum(1 for p, l in zip(predictions, labels) if p == l) / len(predictions)

