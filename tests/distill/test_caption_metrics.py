"""Caption metrics against pycocoevalcap itself, with the Java PTBTokenizer run live (Java is on CI's machines)."""
import logging
import random
import shutil

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from distill.tasks.caption_metrics import (caption_metric_implementation, caption_scores, java_ptb_tokenize,
                                           meteor_scorer, ptb_tokenize)

# ------------------------------------------------ deterministic, varied caption-like strings for the tokenizer check
WORDS = ["man", "woman", "dog", "cat", "Two", "people", "red", "Bus", "street", "riding", "wave", "table", "plate",
         "pizza", "sitting", "near", "the", "a", "an", "of", "on", "with", "is", "are", "white", "large", "small",
         "kitchen", "Giraffe", "standing", "field", "tennis", "player", "racket", "ball", "sky", "train", "tracks"]
NUMBERS = ["2", "10", "3.5", "1,000", "10,000", "0.25", "1950s", "2nd", "3-4", "10:30", "7:45", "100"]
CLITICS = ["dog's", "man's", "isn't", "don't", "can't", "won't", "it's", "they're", "we've", "i'll", "she'd",
           "i'm", "dogs'", "Don't", "cats'", "you're", "i'd've", "ain't", "cannot", "gonna", "wanna", "gotta",
           "dog\u2019s", "o'clock", "o'neil"]
HYPHENS = ["t-shirt", "well-known", "x-ray", "man-made", "black/white", "and/or", "3/4", "e-mail", "two-story"]
ABBREV = ["mr.", "dr.", "st.", "u.s.", "a.m.", "p.m.", "e.g.", "i.e.", "etc.", "mrs.", "u.s.a."]
SYMBOLS = ["$5", "50%", "at&t", "a&b", "x+y", "#1", "&", "@home", "#tag", "$", "%"]
END_PUNCT = [".", ",", ";", ":", "!", "?", "!!", "?!", "...", "!!!"]
WRAP = [("(", ")"), ("[", "]"), ("{", "}"), ('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("`", "'")]
SEPARATORS = [" ", " ", " ", "  ", " - ", " -- ", " \u2014 ", "\t", " ... "]


def _word(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.55:
        return rng.choice(WORDS)
    pool = rng.choice([NUMBERS, CLITICS, HYPHENS, ABBREV, SYMBOLS])
    return rng.choice(pool)


def ptb_cases(n: int = 300, seed: int = 1234) -> list[str]:
    """`n` strings of 1-14 pieces: words, numbers, clitics, abbreviations, symbols, punctuation, brackets, quotes."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        pieces = []
        for _ in range(rng.randint(1, 14)):
            w = _word(rng)
            r = rng.random()
            if r < 0.12:
                a, b = rng.choice(WRAP)
                w = a + w + b
            elif r < 0.3 and not w.endswith("."):
                w = w + rng.choice(END_PUNCT)
            pieces.append(w)
        text = pieces[0]
        for p in pieces[1:]:
            text += rng.choice(SEPARATORS) + p
        if rng.random() < 0.3:
            text = text[0].upper() + text[1:]
        out.append(text)
    return out


needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="java is not on PATH")

REFS = [
    ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave!", "Man surfing, in the ocean."],
    ["Two dogs play with a red ball.", "Two dogs are playing outside.", "A dog's toy is a ball (red)"],
    ["A plate of food with broccoli.", "Broccoli and rice on a white plate.", "A meal [rice, broccoli] on a plate"],
    ["A bus at 10:30 on the street.", "The U.S. bus isn't late.", "A red bus parked near the street"],
]
PREDS = ["A man is surfing a wave.", "Two dogs play with a ball (red)!", "A white plate with broccoli, rice.", ""]


@needs_java
def test_python_fallback_matches_the_java_tokenizer_on_generated_captions():
    cases = ptb_cases(300)
    java = java_ptb_tokenize(cases)  # one JVM for all of them
    mismatches = [(c, j, ptb_tokenize(c)) for c, j in zip(cases, java) if ptb_tokenize(c) != j]
    assert not mismatches, mismatches[:5]
    assert sum("-lrb-" in j or "-lsb-" in j or "-lcb-" in j for j in java) > 10  # the cases do exercise brackets
    assert sum("n't" in j for j in java) > 10 and sum("10:30" in j for j in java) > 5


@needs_java
def test_caption_scores_equal_pycocoevalcap_run_by_hand():
    ours = caption_scores(PREDS, REFS)
    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(REFS)})
    res = tok.tokenize({i: [{"caption": p}] for i, p in enumerate(PREDS)})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    meteor = meteor_scorer()  # pycocoevalcap's Meteor, shared with caption_scores (one JVM per process)
    expected = {f"bleu{i + 1}": 100 * b for i, b in enumerate(bleu)}
    expected.update(meteor=100 * meteor.compute_score(gts, res)[0], rouge_l=100 * Rouge().compute_score(gts, res)[0],
                    cider=100 * Cider().compute_score(gts, res)[0])
    assert set(ours) - {"spice"} == set(expected)
    for k, v in expected.items():
        assert ours[k] == pytest.approx(v, abs=1e-9), k
    assert ours["cider"] > 0 and ours["meteor"] > 0
    assert caption_metric_implementation(java=True).endswith("Java PTB tokenizer")


def test_python_fallback_path_warns_once_and_leaves_meteor_out(caplog):
    with caplog.at_level(logging.WARNING, logger="distill.tasks.caption_metrics"):
        scores = caption_scores(PREDS, REFS, java=False)
        caption_scores(PREDS, REFS, java=False)
    assert "meteor" not in scores and {"bleu4", "rouge_l", "cider"} <= set(scores)
    assert len([r for r in caption_scores.__globals__["_FALLBACK_NOTE"]]) == 1  # warned once per process
    gts = {i: [ptb_tokenize(r) for r in refs] for i, refs in enumerate(REFS)}
    res = {i: [ptb_tokenize(p)] for i, p in enumerate(PREDS)}
    assert scores["cider"] == pytest.approx(100 * Cider().compute_score(gts, res)[0], abs=1e-9)
    assert "Python PTB fallback" in caption_metric_implementation(java=False)


def test_caption_scores_rejects_misaligned_input():
    with pytest.raises(ValueError):
        caption_scores(PREDS[:2], REFS, java=False)
    with pytest.raises(ValueError):
        caption_scores(["a"], [[]], java=False)
