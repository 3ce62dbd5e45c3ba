"""OFA's own inference for the closed-answer tasks (VQA, SNLI-VE), run by `OFATeacher` (distill, evaluate, serve).

Facts from OFA-Sys/OFA (`tasks/mm_tasks/vqa_gen.py`, `snli_ve.py`, `utils/eval_utils.py`,
`models/sequence_generator.py`, `data/mm_data/*_dataset.py`, fine-tuned with `--prompt-type=prev_output`):
- the decoder is first fed the `prev_output` prompt: the encoder input without its final EOS, `<s> prompt tokens`
  (the question, plus `object: ...` tags for VQA); the answer follows right after it;
- the candidate answers (BPE of `" answer"`, then EOS) form a trie, applied to the LOGITS before `log_softmax`, so
  each step's log-probs are renormalised over the allowed tokens;
- beam search (`--beam-search-vqa-eval --beam 5 --unnormalized`) ranks by the summed log-probs, no length
  normalisation; the forced prompt tokens add the same constant to every beam of a sample, so they are left out of
  the answer's score here. fairseq stops once 5 hypotheses are finished; generate()'s `early_stopping=True` (that
  rule) miscounts beams that only ever held -inf, so we use the canonical stop (`"never"`: until no running beam
  can beat the worst finished one), which can only differ when a running beam would still overtake after 5
  finished;
- scoring every candidate (OFA's VQA validation `allcand`, and SNLI-VE always) sums the trie-renormalised log-probs
  of each candidate's tokens and EOS after the prompt: with single-token candidates that have distinct first tokens
  (`yes`/`no`/`maybe`) this is the first answer token's log-prob renormalised over the candidates, and EOS adds 0.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from transformers import LogitsProcessorList

from distill.ofa.constraints import TokenTrie
from distill.tasks.base import text_target_ids

NBest = list[tuple[list[int], str, float]]
"""Per sample: (answer ids ending with EOS, answer text, answer log-prob), best first."""


def decoder_prompts(input_ids: torch.Tensor, pad_id: int, eos_id: int) -> list[list[int]]:
    """Per row of the (B, S) encoder input `<s> prompt </s> <pad>...`: the prompt tokens after `<s>`, without EOS and
    padding (OFA's `decoder_prompt[1:]`, i.e. its `prefix_tokens`)."""
    out = []
    for row in input_ids.tolist():
        row = [t for t in row if t != pad_id]
        if row and row[-1] == eos_id:
            row = row[:-1]
        out.append(row[1:])
    return out


class PromptTrieProcessor:
    """A `generate()` logits processor: force each row through its prompt, then restrict it to the answer trie.

    Called on the (rows, V) log-probs of each step (`rows` = batch x beams); `input_ids` starts with `<s>`. Inside the
    prompt the forced token gets score 0 and every other -inf (OFA forces `prefix_tokens` the same way; the constant
    it adds is dropped). After it, tokens off the trie get -inf and the rest are renormalised (`log_softmax` again,
    which equals OFA's `log_softmax` of masked logits); a finished or off-trie answer may only end (EOS).
    generate() starts beams 1..K-1 as copies of beam 0 at -1e9, which can then finish as duplicates before a long
    answer does; they get -inf here, as fairseq's unused beams, so they never count as finished.
    """

    def __init__(self, prompts: Sequence[Sequence[int]], trie: TokenTrie, eos_id: int, num_beams: int):
        self.prompts, self.trie, self.eos_id, self.num_beams = [list(p) for p in prompts], trie, eos_id, num_beams

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - 1
        allowed = torch.zeros_like(scores, dtype=torch.bool)
        forced = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
        seqs = input_ids.tolist()
        for r, seq in enumerate(seqs):
            prompt = self.prompts[r // self.num_beams]
            if step < len(prompt):
                allowed[r, prompt[step]] = True
                forced[r] = True
            else:
                allowed[r, self.trie.next_tokens(seq[1 + len(prompt):]) or [self.eos_id]] = True
        if step == 0:  # all beams start as copies of beam 0: kill the copies (fairseq expands only the first beam
            allowed[torch.arange(scores.shape[0], device=scores.device) % self.num_beams != 0] = False  # at step 0)
        out = torch.log_softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        return torch.where(forced[:, None], torch.where(allowed, 0.0, float("-inf")), out)


def _encode(model, inputs: dict[str, torch.Tensor]):
    return model.encoder(inputs["input_ids"], patch_images=inputs.get("patch_images"),
                         patch_masks=inputs.get("patch_masks"))


def beam_search_answers(model, tokenizer, inputs: dict[str, torch.Tensor], answers: Sequence[str], num_beams: int,
                        num_return_sequences: int = 1) -> list[NBest]:
    """OFA's `--beam-search-vqa-eval`: beam search after the forced prompt, over the answer trie, unnormalised.

    Args:
        inputs: `input_ids` (B, S) `<s> prompt </s>` right-padded, `patch_images` (B, 3, H, W), `patch_masks` (B,).
        answers: the candidate answers (OFA: the 3,129 trainval answers).
    Returns:
        per sample the `num_return_sequences` best answers (ids after the prompt, ending with EOS; text; the summed
        trie-renormalised log-prob of those ids).
    """
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    targets = [text_target_ids(a, tokenizer) for a in answers]
    prompts = decoder_prompts(inputs["input_ids"], pad, eos)
    processor = PromptTrieProcessor(prompts, TokenTrie(targets), eos, num_beams)
    # the beam-only flags go with beams: greedy generate() warns that they are ignored
    beam_flags = {"length_penalty": 0.0, "early_stopping": "never"} if num_beams > 1 else {}
    res = model.generate(
        **inputs, num_beams=num_beams, num_return_sequences=num_return_sequences, do_sample=False,
        max_new_tokens=max(len(p) for p in prompts) + max(len(t) for t in targets), **beam_flags,
        no_repeat_ngram_size=0, forced_eos_token_id=None, min_new_tokens=0,
        logits_processor=LogitsProcessorList([processor]), output_scores=True, return_dict_in_generate=True,
    )
    # greedy (num_beams=1) output has no beam_indices; the processor already returns log-probs either way
    steps = model.compute_transition_scores(res.sequences, res.scores, getattr(res, "beam_indices", None),
                                            normalize_logits=False)
    out: list[NBest] = []
    for k, (seq, sc) in enumerate(zip(res.sequences.tolist(), steps.float().tolist())):
        if k % num_return_sequences == 0:
            out.append([])
        start = len(prompts[k // num_return_sequences])
        ids, total = [], 0.0
        for tok, s in zip(seq[1 + start:], sc[start:]):
            if tok == pad:
                break
            ids.append(tok)
            total += s
            if tok == eos:
                break
        if not ids or ids[-1] != eos:
            ids.append(eos)
        out[-1].append((ids, tokenizer.decode(ids, skip_special_tokens=True).strip(), total))
    return out


def candidate_scores(model, tokenizer, inputs: dict[str, torch.Tensor], candidates: Sequence[str],
                     chunk_size: int = 20) -> torch.Tensor:
    """OFA's all-candidate scoring (VQA `allcand`, SNLI-VE): (B, C) summed trie-renormalised log-probs of each
    candidate's tokens and EOS, each fed after the sample's `prev_output` prompt. Candidates go through the decoder
    `chunk_size` at a time for all samples (OFA's `valid_batch_size`, 20)."""
    eos, pad, bos = tokenizer.eos_token_id, tokenizer.pad_token_id, model.config.decoder_start_token_id
    targets = [text_target_ids(c, tokenizer) for c in candidates]
    trie = TokenTrie(targets)
    prompts = decoder_prompts(inputs["input_ids"], pad, eos)
    enc = _encode(model, inputs)
    device = enc.last_hidden_state.device
    vocab = model.config.vocab_size
    b = len(prompts)
    result = []
    for lo in range(0, len(targets), chunk_size):
        chunk = targets[lo: lo + chunk_size]
        c, m = len(chunk), max(len(t) for t in chunk)
        # allowed[j, k]: tokens the trie allows as answer token k of candidate j (OFA's constraint masks)
        allowed = torch.zeros((c, m, vocab), dtype=torch.bool)
        tgt = torch.full((c, m), pad, dtype=torch.long)
        for j, t in enumerate(chunk):
            tgt[j, : len(t)] = torch.tensor(t)
            for k in range(len(t)):
                allowed[j, k, trie.next_tokens(t[:k])] = True
        seqs = [[bos] + p + t[:-1] for p in prompts for t in chunk]  # row-major: sample, then candidate
        length = max(len(s) for s in seqs)
        dec = torch.full((b * c, length), pad, dtype=torch.long)
        for r, s in enumerate(seqs):
            dec[r, : len(s)] = torch.tensor(s)
        rep = lambda x: x.repeat_interleave(c, dim=0)  # noqa: E731  (B, ...) -> (B*C, ...)
        hidden = model.decoder(input_ids=dec.to(device), encoder_hidden_states=rep(enc.last_hidden_state),
                               encoder_padding_mask=rep(enc.padding_mask),
                               encoder_position_embedding=rep(enc.position_embedding)).last_hidden_state
        # the answer's k-th token is predicted at decoder index len(prompt) + k
        pos = torch.tensor([[len(p) + k for k in range(m)] for p in prompts for _ in chunk], device=device)
        pos = pos.clamp(max=length - 1)
        h = hidden.gather(1, pos[..., None].expand(-1, -1, hidden.shape[-1]))
        logits = model.decoder.output_projection(h).float()  # (B*C, M, V)
        mask = allowed.to(device).repeat(b, 1, 1)
        logp = torch.log_softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)
        t = tgt.to(device).repeat(b, 1)
        picked = logp.gather(-1, t.clamp(min=0)[..., None]).squeeze(-1)
        picked = picked.masked_fill(t.eq(pad), 0.0)
        result.append(picked.sum(-1).view(b, c))
    return torch.cat(result, dim=-1)


def rank_candidates(model, tokenizer, inputs: dict[str, torch.Tensor], candidates: Sequence[str],
                    num_return_sequences: int = 1, chunk_size: int = 20) -> list[NBest]:
    """`candidate_scores` turned into n-best lists (best first; ties: the earlier candidate, as argmax)."""
    scores = candidate_scores(model, tokenizer, inputs, candidates, chunk_size)
    out = []
    for row in scores.tolist():
        order = sorted(range(len(candidates)), key=lambda k: (-row[k], k))[:num_return_sequences]
        out.append([(text_target_ids(candidates[k], tokenizer), candidates[k], row[k]) for k in order])
    return out
