"""Beams share their sample's encoder output and cross-attention cache: same results as transformers' stock handling
(encoder output repeated per beam, the whole EncoderDecoderCache re-ordered every step) and as teacher forcing."""
import sys
from pathlib import Path

import pytest
import torch
from transformers import GenerationMixin

sys.path.insert(0, str(Path(__file__).parent))  # the suite runs with --import-mode=importlib
from ofa_helpers import expected, fixture_model, other_config, randomized  # noqa: E402

from distill.ofa import OFAModel  # noqa: E402
from distill.ofa.cache import OFACache  # noqa: E402

BINS = list(range(100, 160))
DECODINGS = {
    "greedy": dict(num_beams=1),
    "beam": dict(num_beams=3),
    "nbest": dict(num_beams=4, num_return_sequences=3),
    "prefix": dict(num_beams=3, num_return_sequences=2, prefix_allowed_tokens_fn=lambda b, ids: BINS),
    "no_repeat": dict(num_beams=3, no_repeat_ngram_size=2),
    "no_repeat_greedy": dict(num_beams=1, no_repeat_ngram_size=1),
}


class StockOFAModel(OFAModel):
    """transformers' own generate() plumbing: the encoder output repeated for each beam and a plain
    EncoderDecoderCache, both halves re-ordered at every beam-search step."""

    def _expand_inputs_for_generation(self, *args, **kwargs):
        return GenerationMixin._expand_inputs_for_generation(self, *args, **kwargs)

    def _prepare_cache_for_generation(self, *args, **kwargs):
        return GenerationMixin._prepare_cache_for_generation(self, *args, **kwargs)


def _as_stock(model: OFAModel) -> StockOFAModel:
    stock = StockOFAModel(model.config).eval()
    stock.load_state_dict(model.state_dict())
    return stock


def _batch8():
    """A config the fixture never shows, with 8 samples (padded texts of several lengths, 3 x 2 patches)."""
    model = randomized(OFAModel(other_config()), seed=3).eval()
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(4, 300, (8, 7), generator=generator)
    input_ids[:, 0] = 0
    for row, length in enumerate([7, 5, 3, 7, 6, 4, 7, 2]):
        input_ids[row, length - 1], input_ids[row, length:] = 2, 1
    images = torch.rand(8, 3, 48, 32, generator=generator) * 2 - 1
    return model, dict(input_ids=input_ids, patch_images=images)


def _fixture_batch1():
    e = expected()
    return fixture_model(), dict(input_ids=e["main.input_ids"][:1], patch_images=e["main.patch_images"][:1])


@pytest.fixture(scope="module")
def setups():
    """name -> (model, its StockOFAModel twin, inputs)."""
    return {name: (model, _as_stock(model), inputs)
            for name, (model, inputs) in {"batch1": _fixture_batch1(), "batch8": _batch8()}.items()}


@pytest.mark.parametrize("decoding", list(DECODINGS))
@pytest.mark.parametrize("setup", ["batch1", "batch8"])
def test_same_ids_and_scores_as_stock_generate(setups, setup, decoding):
    model, stock, inputs = setups[setup]
    kwargs = dict(inputs, max_new_tokens=8, forced_eos_token_id=None, return_dict_in_generate=True,
                  output_scores=True, **DECODINGS[decoding])
    with torch.inference_mode():
        ours = model.generate(**kwargs)
        reference = stock.generate(**kwargs)
        uncached = model.generate(**kwargs, use_cache=False)
    assert ours.sequences.tolist() == reference.sequences.tolist()
    assert ours.sequences.tolist() == uncached.sequences.tolist()
    for step, ref in zip(ours.scores, reference.scores):
        finite = ref.isfinite()
        assert torch.equal(finite, step.isfinite())
        assert (step[finite] - ref[finite]).abs().max() < 1e-4
    if "sequences_scores" in ours:
        assert (ours.sequences_scores - reference.sequences_scores).abs().max() < 1e-4


def test_beams_share_one_cross_attention_row_per_sample(setups):
    model, _, inputs = setups["batch8"]
    out = model.generate(**inputs, max_new_tokens=4, num_beams=3, return_dict_in_generate=True)
    cache = out["cache"] if "cache" in out else out["past_key_values"]
    assert isinstance(cache, OFACache)
    assert cache.self_attention_cache.layers[0].keys.shape[0] == 8 * 3
    assert cache.cross_attention_cache.layers[0].keys.shape[0] == 8
    assert cache.cross_position_keys.shape[0] == 8


def test_grouped_decoder_equals_repeated_encoder_rows(setups):
    """The decoder given one encoder row per sample and g decoder rows per sample = the same with repeated rows."""
    model, _, inputs = setups["batch8"]
    generator = torch.Generator().manual_seed(2)
    decoder_ids = torch.randint(3, 300, (8 * 3, 5), generator=generator)
    with torch.no_grad():
        enc = model.encoder(inputs["input_ids"], patch_images=inputs["patch_images"])
        rep = lambda x: x.repeat_interleave(3, dim=0)  # noqa: E731
        shared = model.decoder(input_ids=decoder_ids, encoder_hidden_states=enc.last_hidden_state,
                               encoder_padding_mask=enc.padding_mask,
                               encoder_position_embedding=enc.position_embedding).last_hidden_state
        repeated = model.decoder(input_ids=decoder_ids, encoder_hidden_states=rep(enc.last_hidden_state),
                                 encoder_padding_mask=rep(enc.padding_mask),
                                 encoder_position_embedding=rep(enc.position_embedding)).last_hidden_state
    assert (shared - repeated).abs().max() < 1e-5
