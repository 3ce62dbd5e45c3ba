"""OFA's caption and grounding decoding as fairseq's `SequenceGenerator` runs it, expressed as `generate()` kwargs.

OFA's numbers (and NARVL's KD captions) come from `SequenceGenerator` (OFA-Sys/OFA `models/sequence_generator.py`;
the transformers port ships the same file as `models/ofa/generate/sequence_generator.py` on `feature/add_transformers`,
cited below as SG with main-branch line numbers), built by `tasks/ofa_task.py:289-305` from the evaluation flags:
caption `--beam=5 --max-len-b=16 --no-repeat-ngram-size=3` (`run_scripts/caption/evaluate_caption.sh:28-30`),
RefCOCO `--beam=5 --min-len=4 --max-len-a=0 --max-len-b=4 --no-repeat-ngram-size=3`
(`run_scripts/refcoco/evaluate_refcoco.sh:29-33`), fairseq's defaults for the rest (`min_len` 1, `max_len_a` 0,
`lenpen` 1, `unkpen` 0, scores normalised: `fairseq/dataclass/configs.py:763-805`).

Its rules, and how each is met with transformers 5's beam search (`generate()`; no beam search of our own):
- the decoder starts from `<s>` (SG:293), as the config's `decoder_start_token_id`;
- log-probs are `log_softmax` of the logits (SG:882-884); every later rule edits them
  without renormalising, as generate()'s beam search runs its logits processors on log-probs;
- `constraint_range` "S,E" (SG:877-880) masks the LOGITS of ids 4..S-1 and E.. before that `log_softmax`, so the
  allowed ids (the 4 specials and S..E-1) are renormalised among themselves: `ConstraintRangeLogitsProcessor`,
  first in the list, re-applies `log_softmax` over them (the same as masking the logits);
- EOS gets -inf while `step < min_len` (SG:391-393): `LengthLogitsProcessor` (transformers'
  `MinNewTokensLengthLogitsProcessor` does the same but keeps its EOS id on the device it was built for);
- `<pad>` is never chosen (SG:397): `SuppressTokensLogitsProcessor`, which also takes the settings' own
  `suppress_tokens` (after any renormalisation, as `<pad>`); `unkpen` is subtracted from `<unk>`'s log-prob (SG:398):
  `SequenceBiasLogitsProcessor`;
- `max_len = max_len_a * src_len + max_len_b` (SG:267); at `step >= max_len` every id but EOS gets -inf and EOS keeps
  its own log-prob (SG:410-412). transformers' forced EOS scores it 0 instead, so `LengthLogitsProcessor`.
  OFA runs these tasks with `max_len_a` 0, the only value supported here (`max_len` = `max_new_tokens` - 1);
- `no_repeat_ngram_size` n (SG:435-436, `fairseq/ngram_repeat_block.py:96-128`): bans the tokens that would repeat
  an n-gram of `<s>` + the hypothesis: transformers' `NoRepeatNGramLogitsProcessor` on the same ids;
- each step keeps the 2 x beam best candidates over all beams (SG:315, `fairseq/search.py:119-140`; step 0
  expands beam 0 only): generate()'s `beams_to_keep` is 2 x beam, and its -1e9 start scores of beams 1.. do the
  same;
- an EOS candidate is finalised only when it ranks among the first `beam` candidates (SG:454-462), and the `beam`
  first non-EOS candidates continue (SG:538-552): generate()'s `top_num_beam_mask` and running-beam choice;
- a finished hypothesis scores `sum of log-probs / (step + 1) ** lenpen`, `step + 1` the generated tokens with EOS
  (SG:689-690): generate()'s `length_penalty` divides by `cur_len + 1 - decoder_prompt_len`, the same count;
- **finalisation is first come** (SG:722-735): a sentence keeps the first `beam` hypotheses finalised, in candidate
  order, and is finished as soon as it has `beam` of them or at `step == max_len` (SG:746-749, 769). generate()'s
  `early_stopping=True` stops at `beam` too, but when one step finishes more hypotheses than slots are left it keeps
  the best `beam` by score among the old and the new ones, dropping an earlier, worse one that fairseq keeps; its
  `MaxLengthCriteria` also finishes every candidate at the last step. generate() cannot express that rule with its
  own criteria, so `FirstComeFinalisation` (a stopping criterion) marks an EOS candidate finished only while its
  sentence has slots left. generate()'s own `EosTokenCriteria` would finish every EOS candidate (criteria are OR-ed),
  so its `eos_token_id` is an id no model writes (`UNWRITTEN_ID`; `None` would make beam search fill finished rows
  with -1 instead of `<pad>`), and the length limit is set one step beyond `max_len`, where every sentence is
  already full (each live beam can only end);
- the hypotheses come back sorted by score (SG:598-605): generate()'s order.
Not supported (OFA's caption and RefCOCO evaluations do not use them): `max_len_a` != 0, `temperature` != 1,
`match_source_len`, prefix tokens, `constraint_trie` (VQA/SNLI-VE: `distill.tasks.ofa_decoding`), NaN log-probs set
to -inf (SG:395). With `num_beams=1` generate() runs greedy search, whose processors see logits: a
`log_softmax` is put first then, so that the scores are fairseq's beam-1 scores.

The settings live in the task as plain JSON values (`sequence_generator_settings`: generate()'s names where they
exist, so `distill --num-beams/--max-new-tokens/--no-repeat-ngram-size` overrides keep working, plus
`"decoding": "fairseq"`); `generate_kwargs` turns them into `generate()` kwargs at each call.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    SequenceBiasLogitsProcessor,
    StoppingCriteria,
    StoppingCriteriaList,
    SuppressTokensLogitsProcessor,
)

from distill.errors import UserError

FAIRSEQ = "fairseq"
"""`settings["decoding"]` of settings that `generate_kwargs` turns into fairseq's rules."""
NUM_SPECIALS = 4
"""Ids below this (`<s>`, `<pad>`, `</s>`, `<unk>`) stay allowed under `constraint_range` (SG:879: `4:start`)."""
DECODER_PROMPT_LEN = 1
"""The decoder starts from one token (`<s>`)."""
UNWRITTEN_ID = 2**31 - 1
"""generate()'s `eos_token_id` under these rules: beyond any vocabulary, so its `EosTokenCriteria` never fires."""


def sequence_generator_settings(beam: int = 5, max_len_b: int = 200, min_len: int = 1, no_repeat_ngram_size: int = 0,
                                lenpen: float = 1.0, unkpen: float = 0.0, normalize_scores: bool = True,
                                constraint_range: Sequence[int] | None = None) -> dict[str, Any]:
    """fairseq's generation flags (`--beam --max-len-b --min-len --no-repeat-ngram-size --lenpen --unkpen
    --unnormalized`, OFA's `--constraint-range` as `(start, end)`) as a task's JSON settings. `max_new_tokens` counts
    the final EOS step, so it is `max_len_b + 1`; `length_penalty` is left out at its default, 1."""
    settings = {"num_beams": beam, "max_new_tokens": max_len_b + 1, "min_new_tokens": min_len,
                "no_repeat_ngram_size": no_repeat_ngram_size, "decoding": FAIRSEQ}
    if not normalize_scores or lenpen != 1.0:  # 1.0 is also generate()'s default: other teachers see no change
        settings["length_penalty"] = lenpen if normalize_scores else 0.0
    if unkpen:
        settings["unk_penalty"] = unkpen
    if constraint_range is not None:
        settings["constraint_range"] = [int(constraint_range[0]), int(constraint_range[1])]
    return settings


def uses_fairseq_rules(settings: Mapping[str, Any]) -> bool:
    """Whether `settings` are `sequence_generator_settings` (their transition scores are already fairseq's
    log-probs: `compute_transition_scores` must not renormalise them)."""
    return settings.get("decoding") == FAIRSEQ


class LogSoftmaxLogitsProcessor(LogitsProcessor):
    """(rows, V) logits -> log-probs; first in the list for greedy search, whose processors otherwise see logits."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return torch.log_softmax(scores, dim=-1)


class ConstraintRangeLogitsProcessor(LogitsProcessor):
    """OFA's `constraint_range` (SG:877-880): ids `NUM_SPECIALS..start-1` and `end..` get -inf and the rest are
    renormalised among themselves. On (rows, V) log-probs, `log_softmax` of the masked values equals fairseq's
    `log_softmax` of the masked logits. Must come before every other processor."""

    def __init__(self, start: int, end: int):
        self.start, self.end = int(start), int(end)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        masked = scores.clone()
        masked[:, NUM_SPECIALS:self.start] = float("-inf")
        masked[:, self.end:] = float("-inf")
        return torch.log_softmax(masked, dim=-1)


class LengthLogitsProcessor(LogitsProcessor):
    """fairseq's length rules on the (rows, V) log-probs of generated step `step` (0-based, after `prompt_len` decoder
    tokens): EOS gets -inf while `step < min_len` (SG:391-393); from `step == max_len` on every id but EOS gets -inf
    and EOS keeps its own log-prob (SG:410-412; transformers' forced EOS would score it 0)."""

    def __init__(self, min_len: int, max_len: int, eos_token_id: int, prompt_len: int = DECODER_PROMPT_LEN):
        self.min_len, self.max_len, self.eos = int(min_len), int(max_len), int(eos_token_id)
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_len
        if step >= self.max_len:
            out = torch.full_like(scores, float("-inf"))
            out[:, self.eos] = scores[:, self.eos]
            return out
        if step < self.min_len:
            scores = scores.clone()
            scores[:, self.eos] = float("-inf")
        return scores


class FirstComeFinalisation(StoppingCriteria):
    """fairseq's finalisation (SG:722-735, 746-749, 769) as the beam search's "which candidates finished" test.

    Called each step on the (batch x 2·beam, T) candidates, best first within each sentence (greedy: (batch, T)).
    An EOS candidate counts as finished unless it ranks among the first `num_beams` and its sentence has no slot
    left for it (slots: `num_beams`, filled in candidate order). generate() finalises exactly the finished ones among
    the first `num_beams` (`top_num_beam_mask`) and never continues a finished candidate, so it keeps fairseq's
    first-come hypotheses instead of the best `num_beams` of old and new. A candidate refused a slot may continue,
    but only in a sentence that is already full, to which generate() adds nothing more (`early_stopping=True`).
    Holds the slot counts of one generate() call (fresh per call: `generate_kwargs`); the EOS id is
    `eos_token_id`.
    """

    def __init__(self, num_beams: int, eos_token_id: int):
        self.num_beams, self.eos_token_id = int(num_beams), int(eos_token_id)
        self._filled: torch.Tensor | None = None
        self._length = 0

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs) -> torch.BoolTensor:
        is_eos = input_ids[:, -1] == self.eos_token_id
        if self.num_beams == 1:
            return is_eos
        width = 2 * self.num_beams  # generate()'s beams_to_keep with one EOS id
        per_sentence = is_eos.view(-1, width)
        if self._filled is None or input_ids.shape[1] <= self._length:  # a new generate() call
            self._filled = torch.zeros(per_sentence.shape[0], dtype=torch.long, device=input_ids.device)
        self._length = input_ids.shape[1]
        top = per_sentence[:, :self.num_beams]
        kept = top & (self._filled[:, None] + top.long().cumsum(dim=1) <= self.num_beams)
        self._filled += kept.sum(dim=1)
        finished = per_sentence.clone()
        finished[:, :self.num_beams] = kept
        return finished.view(-1)


def check_settings(settings: Mapping[str, Any]) -> None:
    """A one-line `UserError` for fairseq settings that cannot decode (SG:268-270: `min_len` above `max_len`), e.g.
    after a `--max-new-tokens` override; other settings pass."""
    if uses_fairseq_rules(settings):
        min_len, max_len = int(settings.get("min_new_tokens") or 0), int(settings["max_new_tokens"]) - 1
        if min_len > max_len:
            raise UserError(f"max_new_tokens {max_len + 1} leaves {max_len} tokens before EOS, fewer than the "
                            f"task's min_new_tokens {min_len}")


def generate_kwargs(settings: Mapping[str, Any], tokenizer: Any) -> dict[str, Any]:
    """`generate()` kwargs for `settings`: fairseq's rules for `sequence_generator_settings` (see the module
    docstring; `suppress_tokens` and a `constraint_range` may be added to them), any other settings unchanged.
    `tokenizer` gives the `<pad>`, `</s>` and `<unk>` ids. Call it for each generate() call: the stopping criterion
    holds that call's state."""
    if not uses_fairseq_rules(settings):
        return dict(settings)
    check_settings(settings)
    rest = {k: v for k, v in settings.items() if k not in ("decoding", "unk_penalty", "constraint_range",
                                                           "suppress_tokens", "min_new_tokens", "no_repeat_ngram_size")}
    beams, max_len = int(settings.get("num_beams", 1) or 1), int(settings["max_new_tokens"]) - 1
    min_len, eos = int(settings.get("min_new_tokens") or 0), tokenizer.eos_token_id
    processors = [LogSoftmaxLogitsProcessor()] if beams == 1 else []
    if settings.get("constraint_range") is not None:
        processors.append(ConstraintRangeLogitsProcessor(*settings["constraint_range"]))
    processors += [LengthLogitsProcessor(min_len, max_len, eos),
                   SuppressTokensLogitsProcessor([tokenizer.pad_token_id, *settings.get("suppress_tokens", ())])]
    if settings.get("unk_penalty"):
        processors.append(SequenceBiasLogitsProcessor({(tokenizer.unk_token_id,): -float(settings["unk_penalty"])}))
    if settings.get("no_repeat_ngram_size"):
        processors.append(NoRepeatNGramLogitsProcessor(int(settings["no_repeat_ngram_size"])))
    # one step beyond max_len: every sentence is full by then (see FirstComeFinalisation), so it never runs
    rest.update(num_beams=beams, max_new_tokens=max_len + 2, min_new_tokens=0, no_repeat_ngram_size=0,
                forced_eos_token_id=None, eos_token_id=UNWRITTEN_ID, do_sample=False,
                logits_processor=LogitsProcessorList(processors),
                stopping_criteria=StoppingCriteriaList([FirstComeFinalisation(beams, eos)]))
    if beams > 1:
        rest.update(early_stopping=True, length_penalty=float(settings.get("length_penalty", 1.0)))
    else:
        rest.pop("length_penalty", None)  # greedy: a beam-only flag
    return rest
