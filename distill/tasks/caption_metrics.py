"""Caption metrics as the COCO caption evaluation computes them: pycocoevalcap's PTBTokenizer (Stanford, Java), then
BLEU-1..4, METEOR 1.5, ROUGE-L, CIDEr-D and (when it can run) SPICE, each x100 as papers report.

`caption_scores` is the evaluation/report metric. `cider_d` stays the quick training-time metric: CIDEr-D alone on the
pure-Python `ptb_tokenize`, so a training evaluation never starts a JVM.
"""
from __future__ import annotations

import contextlib
import io
import logging
import re
import shutil
from pathlib import Path
from typing import Sequence

from pycocoevalcap import spice
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.spice.spice import Spice
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from distill.packages import package_version

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------- the Python PTB fallback

# Tokens pycocoevalcap's PTBTokenizer removes after tokenising. Its list spells brackets -LRB- etc., but the tokenizer
# runs with -lowerCase, so brackets come out as -lrb- and are KEPT: we reproduce that.
_PTB_DROP = {"''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
# Characters Stanford's lexer rewrites before tokenising (curly quotes, dashes, the ellipsis character).
_UNICODE = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2014": " -- ",
                          "\u2013": " -- ", "\u2026": " ... "})
_QUOTE = "''"  # PTB writes a double quote as `` or '' (both removed by the filter)
_OPENERS = set('([{"`\'')
_CLOSERS = set(')]}"\'`')
_SPLIT_WORDS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta"), "wanna": ("wan", "na"),
                "lemme": ("lem", "me"), "gimme": ("gim", "me")}
# Abbreviations whose final period PTB keeps (the common ones; lowercase).
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "etc", "vs", "no", "inc", "co", "ltd", "mt",
                  "ft", "jan", "feb", "aug", "sept", "oct", "nov", "dec", "gen", "col", "sgt", "rev", "ave"}
_DOTTED = re.compile(r"^(?:[a-z]\.)*[a-z]$")  # a, u.s, e.g, a.m: their final period stays on
_CLITIC = re.compile(r"^(.*[a-z0-9])(n't|'s|'re|'ve|'ll|'d|'m)$")
# Inner symbols split off ("at&t" -> "at & t"), and so does a comma next to a letter ("well,done"; not "1,000").
_INNER_SPLIT = re.compile(r"([&+=*~^|\\]|(?<=[a-z]),|,(?=[a-z]))")
# "10 3/4" is one PTB token, written with a no-break space (which pycocoevalcap's split(' ') keeps inside it).
_MIXED_FRACTION = re.compile(r"(?<![\w.,])(\d+) (\d+/\d+)")
_TIME_SUFFIX = re.compile(r"^(\d{1,2}:\d\d)([a-z]+)$")  # 12:30pm -> 12:30 pm


def _split_core(core: str) -> list[str]:
    """A chunk without its leading/trailing punctuation: inner symbols, commas, clitics, the fused words."""
    out: list[str] = []
    for part in _INNER_SPLIT.split(core):
        if not part:
            continue
        if len(part) == 1 and _INNER_SPLIT.fullmatch(part):
            out.append(part)
            continue
        m = _TIME_SUFFIX.match(part)
        if m:
            out += [m.group(1), m.group(2)]
            continue
        tail: list[str] = []
        while (m := _CLITIC.match(part)) is not None:
            part, clitic = m.group(1), m.group(2)
            tail.insert(0, clitic)
        out += list(_SPLIT_WORDS.get(part, (part,))) + tail
    return out


def _keeps_period(stem: str) -> bool:
    """Whether PTB keeps a period after `stem` (its last word is an abbreviation or a single letter)."""
    last = _INNER_SPLIT.split(stem)[-1]
    return last in _ABBREVIATIONS or _DOTTED.match(last) is not None


def _split_chunk(chunk: str) -> list[str]:
    """One whitespace-delimited chunk -> PTB tokens (before the punctuation filter)."""
    head: list[str] = []
    tail: list[str] = []
    while chunk and (chunk[0] in _OPENERS or chunk[0] == "$" or (chunk[0] in "#-" and chunk[1:2].isalnum()
                                                                    and (chunk[0] == "-" or chunk[1:2].isdigit()))):
        head.append(_QUOTE if chunk[0] == '"' else _BRACKETS.get(chunk[0], chunk[0]))
        chunk = chunk[1:]
    while chunk:
        if chunk.endswith("..."):
            if _keeps_period(chunk[:-3]):  # "a..." -> "a." ". ."
                tail[:0] = [".", "."]
                chunk = chunk[:-2]
            else:
                tail.insert(0, "...")
                chunk = chunk[:-3]
        elif (m := re.search(r"[!?]+$", chunk)) is not None:
            tail.insert(0, m.group())
            chunk = chunk[: m.start()]
        elif chunk[-1] in _CLOSERS:
            tail.insert(0, _QUOTE if chunk[-1] == '"' else _BRACKETS.get(chunk[-1], chunk[-1]))
            chunk = chunk[:-1]
        elif chunk[-1] in ",;:%-":
            tail.insert(0, chunk[-1])
            chunk = chunk[:-1]
        elif chunk[-1] == ".":
            stem = chunk[:-1]
            if _keeps_period(stem):
                break  # the abbreviation keeps its period
            tail.insert(0, ".")
            chunk = stem
        else:
            break
    core = _split_core(chunk) if chunk else []
    return head + core + tail


def ptb_tokenize(text: str) -> str:
    """Pure-Python stand-in for pycocoevalcap's tokenisation: Stanford PTBTokenizer (`-preserveLines -lowerCase`)
    followed by pycocoevalcap's punctuation filter.

    Covers what captions hold: words, clitics (`dog 's`, `do n't`, `ca n't`), fused words (`can not`, `gon na`),
    abbreviations that keep their period (`u.s.`, `mr.`, `a.m.`), numbers (`3.5`, `1,000`), times (`10:30`),
    hyphenated and slashed words, `$`/`%`/`&`, and brackets, which PTB writes `-lrb-`/`-rrb-`/`-lsb-`/`-rsb-`/
    `-lcb-`/`-rcb-` and pycocoevalcap keeps (its filter lists them upper-case, the tokenizer writes them lower-case).
    Tested against the Java tokenizer on generated captions; exotic text (URLs, emoticons, SGML) may differ.
    """
    text = _MIXED_FRACTION.sub("\\1\0\\2", text.lower().translate(_UNICODE))
    tokens: list[str] = []
    for chunk in text.split():
        tokens += _split_chunk(chunk)
    return " ".join(t.replace("\0", "\xa0") for t in tokens if t not in _PTB_DROP)


# ---------------------------------------------------------------- the official (Java) tokenizer

_LINE_BREAKS = re.compile(r"[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def java_available() -> bool:
    """True when a `java` executable is on PATH (pycocoevalcap's PTBTokenizer and METEOR jars need it)."""
    return shutil.which("java") is not None


def java_ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """pycocoevalcap's own `PTBTokenizer` over all `texts` in ONE JVM start (one line per text, punctuation removed).

    Line breaks inside a text become spaces first: the tokenizer reads one caption per line.
    """
    if not texts:
        return []
    keyed = {i: [{"caption": _LINE_BREAKS.sub(" ", t)}] for i, t in enumerate(texts)}
    out = PTBTokenizer().tokenize(keyed)
    return [out[i][0] for i in range(len(texts))]




def caption_metric_implementation(java: bool | None = None) -> str:
    """Names what `caption_scores` runs, e.g. "pycocoevalcap 1.2, Java PTB tokenizer"."""
    java = java_available() if java is None else java
    tok = "Java PTB tokenizer" if java else "Python PTB fallback, METEOR left out (no java)"
    return f"pycocoevalcap {package_version('pycocoevalcap')}, {tok}"


_SPICE_NOTE = []


def _spice_ready() -> bool:
    """SPICE needs Stanford CoreNLP 3.6.0 jars that pycocoevalcap downloads on first use (from nlp.stanford.edu):
    without them (offline installs) SPICE is left out, and we say so once."""
    lib = Path(spice.__file__).parent / "lib"
    if (lib / "stanford-corenlp-3.6.0.jar").is_file() and (lib / "stanford-corenlp-3.6.0-models.jar").is_file():
        return True
    if not _SPICE_NOTE:
        _SPICE_NOTE.append(1)
        logger.warning("caption metrics: SPICE left out: it needs the Stanford CoreNLP 3.6.0 jars in %s, which "
                       "pycocoevalcap downloads on first use (no network here)", lib)
    return False


_FALLBACK_NOTE = []


def caption_scores(predictions: Sequence[str], references: Sequence[Sequence[str]],
                   java: bool | None = None) -> dict[str, float]:
    """The COCO caption metrics of pycocoevalcap, x100: `bleu1`..`bleu4`, `meteor`, `rouge_l`, `cider`, and `spice`
    when its CoreNLP models are installed.

    Text is tokenised by pycocoevalcap's `PTBTokenizer` (Java) when `java` is on PATH (`java=None`: detect), in one
    JVM for predictions and references together; otherwise by `ptb_tokenize`, with a one-line warning that the
    figures may differ from the official ones, and without METEOR (a Java program too). Scorers are the
    pycocoevalcap classes themselves (BLEU `closest` reference length, CIDEr-D with idf from these references).
    """
    _check(predictions, references)
    return _score(*_tokenized(predictions, references, java)) if predictions else {}


def cider_per_image(predictions: Sequence[str], references: Sequence[Sequence[str]],
                    java: bool | None = None) -> list[float]:
    """pycocoevalcap's CIDEr-D of each image, x100, from one `Cider.compute_score` over all of them (the idf comes
    from the whole set, as for the corpus figure): their mean is `caption_scores(...)["cider"]`. Tokenised as
    `caption_scores` tokenises."""
    _check(predictions, references)
    if not predictions:
        return []
    gts, res, _ = _tokenized(predictions, references, java)
    _, per_image = Cider().compute_score(gts, res)
    return [100.0 * float(s) for s in per_image]


def _check(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference lists")
    for i, refs in enumerate(references):
        if not refs:
            raise ValueError(f"prediction {i} has no reference caption")


def _tokenized(predictions: Sequence[str], references: Sequence[Sequence[str]],
               java: bool | None) -> tuple[dict, dict, bool]:
    """pycocoevalcap's `gts` (image -> tokenised references) and `res` (image -> [tokenised prediction]), and whether
    Java tokenised them."""
    java = java_available() if java is None else java
    flat = list(predictions) + [r for refs in references for r in refs]
    if java:
        toks = java_ptb_tokenize(flat)
    else:
        if not _FALLBACK_NOTE:
            _FALLBACK_NOTE.append(1)
            logger.warning("caption metrics: no java on PATH: Python PTB fallback, no METEOR; "
                           "figures may differ from the official pycocoevalcap ones")
        toks = [ptb_tokenize(t) for t in flat]
    n = len(predictions)
    res = {i: [toks[i]] for i in range(n)}
    gts, k = {}, n
    for i, refs in enumerate(references):
        gts[i] = toks[k: k + len(refs)]
        k += len(refs)
    return gts, res, java


_METEOR: list = []


def meteor_scorer():
    """pycocoevalcap's `Meteor`, started once per process: its JVM takes seconds to load the paraphrase table, so
    every evaluation of a pipeline run shares it (it is thread-safe; its `__del__` stops the JVM at exit)."""
    if not _METEOR:
        _METEOR.append(Meteor())
    return _METEOR[0]


def _score(gts: dict, res: dict, java: bool) -> dict[str, float]:
    out: dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()):  # BleuScorer prints its length ratios
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out.update({f"bleu{i + 1}": 100.0 * float(b) for i, b in enumerate(bleu)})
    if java:
        out["meteor"] = 100.0 * float(meteor_scorer().compute_score(gts, res)[0])
    out["rouge_l"] = 100.0 * float(Rouge().compute_score(gts, res)[0])
    out["cider"] = 100.0 * float(Cider().compute_score(gts, res)[0])
    if java and _spice_ready():
        out["spice"] = 100.0 * float(Spice().compute_score(gts, res)[0])
    return out


def cider_d(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus CIDEr-D (pycocoevalcap `Cider`: n=4, sigma=6, clipped, x10) on `ptb_tokenize`d text, times 100.

    The training-time metric (no JVM). The x100 gives the figure papers report (e.g. OFA-base 138.2). The idf comes
    from the references of the evaluated set, so a corpus of one image scores 0 by construction.
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

