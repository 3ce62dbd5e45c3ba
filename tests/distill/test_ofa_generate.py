"""OFA generation through transformers' own generate(): parity with the OFA reference and behavioural checks."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # the suite runs with --import-mode=importlib
from ofa_helpers import (TOL, expected, fixture_model, max_diff, other_config, randomized)  # noqa: E402,F401

from distill.ofa import OFAModel  # noqa: E402
from distill.ofa.modeling_ofa import _CACHE_FIELD  # noqa: E402

BINS = list(range(1000, 1100))


def _main_inputs():
    e = expected()
    return dict(input_ids=e["main.input_ids"], patch_images=e["main.patch_images"],
                patch_masks=e["main.patch_masks"].bool())


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_reproduces_reference_loop(use_cache):
    """Plain loop of the fixture: no forced </s>, <pad> after </s>, argmax over all ids."""
    model, e = fixture_model(), expected()
    out = model.generate(**_main_inputs(), max_new_tokens=10, forced_eos_token_id=None, use_cache=use_cache,
                         return_dict_in_generate=True, output_logits=True)
    assert out.sequences.tolist() == e["greedy_ids"].tolist()
    step_logits = torch.stack(out.logits, dim=1)
    diff = max_diff(step_logits, e["greedy_step_logits"])
    print(f"\n[ofa generate] greedy step logits (cache={use_cache}) max abs diff {diff:.2e}")
    assert diff <= TOL


@pytest.mark.parametrize("use_cache", [True, False])
def test_transformers_418_greedy_and_beam_parity(use_cache):
    """The config's defaults force </s> at the last step, as OFA-Sys's transformers 4.18 generate did."""
    model, e = fixture_model(), expected()
    greedy = model.generate(**_main_inputs(), max_new_tokens=10, use_cache=use_cache)
    beam = model.generate(**_main_inputs(), max_new_tokens=10, num_beams=3, use_cache=use_cache)
    assert greedy.tolist() == e["greedy_ids_hf418"].tolist()
    assert beam.tolist() == e["beam3_ids_hf418"].tolist()


def _step_by_step_logits(model, input_ids, patch_images, decoder_input_ids):
    """Decoder run one token at a time with the KV cache, returning (B, T, V) logits."""
    encoder_outputs = model.encoder(input_ids, patch_images=patch_images)
    cache, steps = None, []
    for t in range(decoder_input_ids.shape[1]):
        out = model(encoder_outputs=encoder_outputs, decoder_input_ids=decoder_input_ids[:, t:t + 1],
                    past_key_values=cache, use_cache=True)
        cache = out[_CACHE_FIELD]
        steps.append(out.logits)
    return torch.cat(steps, dim=1)


def test_kv_cached_decoding_equals_teacher_forcing():
    model, e = fixture_model(), expected()
    with torch.no_grad():
        cached = _step_by_step_logits(model, e["main.input_ids"], e["main.patch_images"], e["main.decoder_input_ids"])
        forced = model(**_main_inputs(), decoder_input_ids=e["main.decoder_input_ids"]).logits
    vs_reference, vs_forced = max_diff(cached, e["cached_decode_logits"]), max_diff(cached, forced)
    print(f"\n[ofa generate] cached decode vs reference {vs_reference:.2e}, vs own teacher forcing {vs_forced:.2e}")
    assert vs_reference <= TOL and vs_forced <= TOL


def test_no_repeat_ngram_size():
    model = fixture_model()
    plain = model.generate(**_main_inputs(), max_new_tokens=10, forced_eos_token_id=None)
    assert plain[0].tolist().count(220) == 2  # the reference greedy output repeats a token
    for size, beams in ((1, 1), (2, 3)):
        out = model.generate(**_main_inputs(), max_new_tokens=10, forced_eos_token_id=None, num_beams=beams,
                             no_repeat_ngram_size=size)
        for row in out.tolist():
            tokens = [t for t in row if t != 1]
            ngrams = [tuple(tokens[i:i + size]) for i in range(len(tokens) - size + 1)]
            assert len(ngrams) == len(set(ngrams)), (size, row)


def _sequence_log_prob(model, inputs, sequence, eos=2, pad=1):
    """Sum of log-probs of the generated tokens (up to and including </s>) by one teacher-forced forward."""
    with torch.no_grad():
        logits = model(**inputs, decoder_input_ids=sequence[None, :-1]).logits[0]
    log_probs = logits.log_softmax(-1)
    total, length = 0.0, 0
    for t, token in enumerate(sequence[1:].tolist()):
        if token == pad and length and sequence[t].item() in (eos, pad):
            break
        total += log_probs[t, token].item()
        length += 1
        if token == eos:
            break
    return total, length


@pytest.mark.parametrize("use_cache", [True, False])
def test_n_best_sorted_and_scores_are_length_normalised_log_probs(use_cache):
    model, e = fixture_model(), expected()
    penalty, n = 0.7, 3
    out = model.generate(**_main_inputs(), max_new_tokens=6, num_beams=4, num_return_sequences=n,
                         length_penalty=penalty, forced_eos_token_id=None, use_cache=use_cache,
                         return_dict_in_generate=True, output_scores=True)
    assert out.sequences.shape[0] == 2 * n and out.sequences_scores.shape == (2 * n,)
    for b in range(2):
        scores = out.sequences_scores[b * n:(b + 1) * n].tolist()
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(s.tolist()) for s in out.sequences[b * n:(b + 1) * n]}) == n
        inputs = {k: v[b:b + 1] for k, v in _main_inputs().items()}
        for k in range(n):
            total, length = _sequence_log_prob(model, inputs, out.sequences[b * n + k])
            assert abs(total / length**penalty - scores[k]) < 1e-4, (b, k)


def test_prefix_allowed_tokens_fn_restricts_to_bins():
    model = fixture_model()
    inputs = _main_inputs()
    allowed = lambda batch_id, prefix: BINS  # noqa: E731
    greedy = model.generate(**inputs, min_new_tokens=4, max_new_tokens=4, forced_eos_token_id=None,
                            prefix_allowed_tokens_fn=allowed)
    # Independent reference: a manual loop taking the arg-max over the bin ids only.
    manual = torch.zeros(2, 1, dtype=torch.long)
    with torch.no_grad():
        for _ in range(4):
            logits = model(**inputs, decoder_input_ids=manual).logits[:, -1, BINS]
            manual = torch.cat([manual, BINS[0] + logits.argmax(-1, keepdim=True)], dim=1)
    assert greedy.tolist() == manual.tolist()
    beams = model.generate(**inputs, min_new_tokens=4, max_new_tokens=4, num_beams=3, num_return_sequences=3,
                           forced_eos_token_id=None, prefix_allowed_tokens_fn=allowed)
    assert beams.shape == (6, 5) and all(t in BINS for t in beams[:, 1:].flatten().tolist())


def test_text_only_generation():
    model, e = fixture_model(), expected()
    cached = model.generate(e["textonly.input_ids"], max_new_tokens=6, num_beams=2)
    plain = model.generate(e["textonly.input_ids"], max_new_tokens=6, num_beams=2, use_cache=False)
    assert cached.tolist() == plain.tolist() and cached[:, 0].tolist() == [0, 0]


def test_other_config_cache_equals_no_cache():
    """A config the fixture never shows (3 encoder / 2 decoder layers, 4 / 6 heads, buckets 10 and 6, ResNet50)."""
    model = randomized(OFAModel(other_config()), seed=1)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.tensor([[0, 17, 52, 9, 33, 2], [0, 8, 2, 1, 1, 1]])
    patch_images = torch.rand(2, 3, 48, 32, generator=generator) * 2 - 1  # 3 x 2 patches
    decoder_input_ids = torch.randint(3, 300, (2, 12), generator=generator)
    decoder_input_ids[:, 0] = 0
    with torch.no_grad():
        forced = model(input_ids=input_ids, patch_images=patch_images, decoder_input_ids=decoder_input_ids).logits
        cached = _step_by_step_logits(model, input_ids, patch_images, decoder_input_ids)
    assert max_diff(cached, forced) <= TOL
    # Random weights tend to repeat one token; forbidding repeats makes every step see a new prefix.
    kwargs = dict(input_ids=input_ids, patch_images=patch_images, max_new_tokens=8, forced_eos_token_id=None,
                  no_repeat_ngram_size=1, return_dict_in_generate=True, output_scores=True)
    for beams in (1, 2):
        with_cache = model.generate(**kwargs, num_beams=beams, num_return_sequences=beams, use_cache=True)
        without = model.generate(**kwargs, num_beams=beams, num_return_sequences=beams, use_cache=False)
        assert with_cache.sequences.tolist() == without.sequences.tolist()
        if beams > 1:
            assert max_diff(with_cache.sequences_scores, without.sequences_scores) < 1e-4
