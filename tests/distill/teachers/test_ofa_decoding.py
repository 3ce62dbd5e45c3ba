"""OFA's VQA / SNLI-VE inference against an independent step-by-step computation with a tiny real OFA model:
full forward passes (no cache), one candidate and one token at a time, the trie applied to the logits by hand."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from ofa_helpers import randomized  # noqa: E402

from distill.ofa import OFAConfig, OFAModel  # noqa: E402
from distill.ofa.fairseq_rules import generate_kwargs  # noqa: E402
from distill.tasks import get_task  # noqa: E402
from distill.tasks.base import text_target_ids  # noqa: E402
from distill.teachers.ofa_decoding import (beam_search_answers, candidate_scores, decoder_prompts,  # noqa: E402
                                        rank_candidates)
from distill.ofa.tokenization_ofa import train_tiny_tokenizer  # noqa: E402

WORDS = ["what color is the circle", "is there a square", "red", "blue", "green", "red car", "yes", "no", "maybe",
         "object", "tree", "a blue square", "two green triangles"]
ANSWERS = ["red", "blue", "red car", "green", "two green triangles"]


@pytest.fixture(scope="module")
def tok():
    # words seen after a space: " yes", " no", " maybe" become single tokens, as in OFA's BPE; " red car" is
    # " red" + " car", so the trie branches below " red"
    return train_tiny_tokenizer([" " + w for w in WORDS] * 20, vocab_size=350, num_codes=0, num_bins=8)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    cfg = OFAConfig(vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                    decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, resnet_type="resnet18",
                    image_bucket_size=4, token_bucket_size=16, max_position_embeddings=64)
    return randomized(OFAModel(cfg), seed=3)


@pytest.fixture(scope="module")
def inputs(tok):
    vqa = get_task("vqa")
    rows = [{"question": "what color is the circle"},
            {"question": "is there a square", "object_tags": ["tree", "red car"]}]
    prompts = [vqa.prompt(r) for r in rows]
    assert prompts[1] == " is there a square? object: tree red car"
    enc = tok(prompts, return_tensors="pt", padding=True)  # different lengths: right padding
    g = torch.Generator().manual_seed(0)
    return {"input_ids": enc["input_ids"], "patch_images": torch.randn(2, 3, 32, 32, generator=g),
            "patch_masks": torch.ones(2, dtype=torch.bool)}


def _step_by_step(model, tok, inputs, b, candidates, with_prompt=True):
    """Per candidate: sum over its tokens (and EOS) of log_softmax(logits masked to the trie's children), each step a
    full forward pass of <s> + prompt + the answer so far."""
    prompt = decoder_prompts(inputs["input_ids"][b: b + 1], tok.pad_token_id, tok.eos_token_id)[0]
    prompt = prompt if with_prompt else []
    targets = [text_target_ids(c, tok) for c in candidates]
    out = []
    with torch.no_grad():
        for t in targets:
            total = 0.0
            for k in range(len(t)):
                dec = torch.tensor([[0] + prompt + t[:k]])
                logits = model(input_ids=inputs["input_ids"][b: b + 1], patch_images=inputs["patch_images"][b: b + 1],
                               patch_masks=inputs["patch_masks"][b: b + 1], decoder_input_ids=dec).logits[0, -1]
                children = {u[k] for u in targets if u[:k] == t[:k]}
                mask = torch.full_like(logits, float("-inf"))
                mask[list(children)] = 0.0
                total += torch.log_softmax(logits + mask, -1)[t[k]].item()
            out.append(total)
    return out


def test_decoder_prompt_is_the_encoder_input_without_bos_eos_and_padding(tok, inputs):
    prompts = decoder_prompts(inputs["input_ids"], tok.pad_token_id, tok.eos_token_id)
    for row, p in zip(inputs["input_ids"].tolist(), prompts):
        assert row[0] == tok.bos_token_id and [0] + p + [tok.eos_token_id] == [t for t in row if t != tok.pad_token_id]


def test_beam_search_forces_the_prompt_and_scores_unnormalised_on_the_trie(model, tok, inputs):
    assert text_target_ids("red car", tok)[0] == text_target_ids("red", tok)[0]  # a shared trie prefix
    # 5 beams >= 5 answers: beam search keeps every trie path, so its n-best is the exact ranking
    with torch.no_grad():
        nbest = beam_search_answers(model, tok, inputs, ANSWERS, num_beams=5, num_return_sequences=5)
    for b in range(2):
        ref = _step_by_step(model, tok, inputs, b, ANSWERS)
        order = sorted(range(len(ANSWERS)), key=lambda k: -ref[k])
        assert [text for _, text, _ in nbest[b]] == [ANSWERS[k] for k in order]
        assert [lp for _, _, lp in nbest[b]] == pytest.approx([ref[k] for k in order], abs=1e-4)
        assert [ids for ids, _, _ in nbest[b]] == [text_target_ids(ANSWERS[k], tok) for k in order]
        # the prompt matters: without it the scores differ (the test would catch an unforced decoder)
        assert _step_by_step(model, tok, inputs, b, ANSWERS, with_prompt=False) != pytest.approx(ref, abs=1e-3)
    # a long answer outranks a short one when its summed (unnormalised) log-prob is higher, and only then
    longest = ANSWERS.index("two green triangles")
    for b in range(2):
        ref = _step_by_step(model, tok, inputs, b, ANSWERS)
        assert (nbest[b][0][1] == "two green triangles") == (max(ref) == ref[longest])


def test_greedy_over_the_trie_takes_the_best_child_at_each_step(model, tok, inputs):
    """num_beams=1 (`distill --num-beams 1` on VQA) is greedy search on the trie: at each step the best child of the
    answer so far; its score is that answer's summed trie-renormalised log-prob."""
    targets = [text_target_ids(a, tok) for a in ANSWERS]
    with torch.no_grad():
        nbest = beam_search_answers(model, tok, inputs, ANSWERS, num_beams=1)
    for b in range(2):
        ref = dict(zip(ANSWERS, _step_by_step(model, tok, inputs, b, ANSWERS)))
        ids, text, lp = nbest[b][0]
        assert text in ANSWERS and lp == pytest.approx(ref[text], abs=1e-4)
        # greedy: after each prefix of the chosen answer, no sibling continuation scores a better next token
        prompt = decoder_prompts(inputs["input_ids"][b: b + 1], tok.pad_token_id, tok.eos_token_id)[0]
        for k in range(len(ids)):
            children = sorted({u[k] for u in targets if u[:k] == ids[:k]})
            dec = torch.tensor([[0] + prompt + ids[:k]])
            with torch.no_grad():
                logits = model(input_ids=inputs["input_ids"][b: b + 1], patch_images=inputs["patch_images"][b: b + 1],
                               patch_masks=inputs["patch_masks"][b: b + 1], decoder_input_ids=dec).logits[0, -1]
            assert ids[k] == children[int(logits[children].argmax())]


def test_allcand_scores_every_candidate_in_chunks(model, tok, inputs):
    with torch.no_grad():
        scores = candidate_scores(model, tok, inputs, ANSWERS, chunk_size=2)  # 3 chunks: 2 + 2 + 1
    assert scores.shape == (2, len(ANSWERS))
    for b in range(2):
        assert scores[b].tolist() == pytest.approx(_step_by_step(model, tok, inputs, b, ANSWERS), abs=1e-4)
    with torch.no_grad():
        allcand = rank_candidates(model, tok, inputs, ANSWERS, 2)
        beam = beam_search_answers(model, tok, inputs, ANSWERS, 5, 1)
    for b in range(2):
        assert allcand[b][0][1] == ANSWERS[int(scores[b].argmax())] == beam[b][0][1]
        assert allcand[b][0][2] >= allcand[b][1][2]


def test_snli_ve_scores_the_first_answer_token_renormalised_over_the_candidates(model, tok, inputs):
    ent = get_task("entailment")
    firsts = []
    for c in ent.candidates:
        ids = text_target_ids(c, tok)
        assert len(ids) == 2  # one token + EOS with this tokenizer, as with OFA's BPE
        firsts.append(ids[0])
    with torch.no_grad():
        ranked = rank_candidates(model, tok, inputs, ent.candidates, 3)
        for b in range(2):
            prompt = decoder_prompts(inputs["input_ids"][b: b + 1], tok.pad_token_id, tok.eos_token_id)[0]
            logits = model(input_ids=inputs["input_ids"][b: b + 1], patch_images=inputs["patch_images"][b: b + 1],
                           patch_masks=inputs["patch_masks"][b: b + 1],
                           decoder_input_ids=torch.tensor([[0] + prompt])).logits[0, -1]
            ref = torch.log_softmax(logits[firsts], -1).tolist()  # no EOS term
            got = {text: lp for _, text, lp in ranked[b]}
            assert [got[c] for c in ent.candidates] == pytest.approx(ref, abs=1e-5)
            assert ranked[b][0][1] == ent.candidates[max(range(3), key=lambda k: ref[k])]


class _DiscourageEos:
    """Pushes EOS far down (finite, so that the forced EOS at the last step still wins)."""

    def __call__(self, input_ids, scores):
        scores[:, 2] = scores[:, 2] - 1e4
        return scores


@pytest.mark.parametrize("num_beams", [1, 5])
def test_caption_length_is_ofas_max_len_b_16_tokens_then_eos(model, tok, inputs, num_beams):
    from transformers import LogitsProcessorList

    caption = get_task("caption")
    settings = {**caption.generation, "num_beams": num_beams, "no_repeat_ngram_size": 0}

    def run(**overrides):
        kwargs = generate_kwargs({**settings, **overrides}, tok)
        kwargs["logits_processor"] = LogitsProcessorList([_DiscourageEos(), *kwargs["logits_processor"]])
        return model.generate(**inputs, **kwargs)

    with torch.no_grad():
        ours, plain = run(), run(max_new_tokens=16)
    # fairseq's max_len_b=16: steps 0..15 free, EOS forced at step 16 -> 16 tokens + EOS
    assert ours.shape[1] == 1 + 16 + 1 and (ours[:, -1] == 2).all() and (ours[:, 1:-1] != 2).all()
    # the settings' max_new_tokens counts the EOS step: 16 stops at 15 tokens + EOS
    assert plain.shape[1] == 1 + 15 + 1 and (plain[:, -1] == 2).all()
