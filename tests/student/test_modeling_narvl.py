"""NARVLModel against its OFA teacher (the tiny reference fixture), F.ctc_loss and a save/load round trip."""
import logging
from functools import lru_cache
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file

from distill.ofa import OFAConfig, OFAModel
from student import NARVLConfig, NARVLModel, ctc_greedy_decode, query_ctc_loss

FIXTURE = Path(__file__).parents[1] / "fixtures" / "ofa-tiny-reference"
N = 6


@lru_cache(maxsize=1)
def expected() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE / "expected.safetensors")


def teacher() -> OFAModel:
    """The fixture OFA: float16 weights as float32, integer buffers computed from the config."""
    model = OFAModel(OFAConfig.from_pretrained(FIXTURE)).eval()
    model.load_state_dict({k: v.float() for k, v in load_file(FIXTURE / "model.safetensors").items()}, strict=False)
    return model


def inputs(case: str = "textonly") -> dict[str, torch.Tensor]:
    """Fixture inputs; text-only by default, since the image stem is the slow part and is covered by the
    encoder test of every case."""
    e = expected()
    out = {"input_ids": e[f"{case}.input_ids"]}
    if f"{case}.patch_images" in e:
        out["patch_images"] = e[f"{case}.patch_images"]
    return out


@pytest.fixture(scope="module")
def pair():
    ofa = teacher()
    torch.manual_seed(0)
    return ofa, NARVLModel.from_ofa(ofa, num_queries=N, task="caption").eval()


def test_from_ofa_copies_every_weight_except_queries_and_blank(pair):
    ofa, student = pair
    teacher_sd, student_sd = ofa.state_dict(), student.state_dict()
    assert set(student_sd) - set(teacher_sd) == {"query_embed.weight", "blank_row"}
    for key, value in teacher_sd.items():
        assert torch.equal(student_sd[key], value), key
    assert student.config.blank_id == ofa.config.vocab_size == 1100
    assert student.query_embed.weight.shape == (N, 64) and student.blank_row.shape == (1, 64)
    # New weights: normal, std 0.02 for the queries and d_model ** -0.5 for the blank row.
    assert abs(student.query_embed.weight.std().item() / 0.02 - 1) < 0.25
    assert abs(student.blank_row.std().item() / 64**-0.5 - 1) < 0.4
    # The embedding stays tied to the decoder input and the vocabulary projection.
    assert student.decoder.output_projection.weight is student.encoder.embed_tokens.weight
    assert student.decoder.embed_tokens.weight is student.encoder.embed_tokens.weight


@pytest.mark.parametrize("case", ["main", "nonsquare", "textonly"])
def test_encoder_output_equals_teacher_exactly(pair, case):
    ofa, student = pair
    with torch.no_grad():
        got = student.encoder(**inputs(case))
        ref = ofa.encoder(**inputs(case))
        if case == "textonly":
            assert torch.equal(student(**inputs(case)).encoder_last_hidden_state, ref.last_hidden_state)
    assert torch.equal(got.last_hidden_state, ref.last_hidden_state)
    assert torch.equal(got.position_embedding, ref.position_embedding)
    assert torch.equal(got.padding_mask, ref.padding_mask)


def test_logits_are_teacher_decoder_on_queries_plus_blank_column(pair):
    ofa, student = pair
    with torch.no_grad():
        logits = student(**inputs("main")).logits  # with images: patch_images reach the encoder
        enc = ofa.encoder(**inputs("main"))
        states = ofa.decoder(
            inputs_embeds=student.query_embed.weight.expand(2, -1, -1), causal=False,
            encoder_hidden_states=enc.last_hidden_state, encoder_padding_mask=enc.padding_mask,
            encoder_position_embedding=enc.position_embedding,
        ).last_hidden_state
    assert logits.shape == (2, N, 1101)
    torch.testing.assert_close(logits[..., :1100], ofa.decoder.output_projection(states), rtol=0, atol=1e-5)
    torch.testing.assert_close(logits[..., 1100], (states @ student.blank_row.T)[..., 0], rtol=0, atol=1e-5)


def test_queries_attend_both_ways(pair):
    _, student = pair
    with torch.no_grad():
        enc = student.encoder(**inputs())
    kwargs = dict(encoder_hidden_states=enc.last_hidden_state, encoder_padding_mask=enc.padding_mask,
                  encoder_position_embedding=enc.position_embedding)
    with torch.no_grad():
        before = student(**inputs()).logits
        queries = student.query_embed.weight.clone()
        # Only the LAST query changes (random noise: a constant shift would vanish in layernorm_embedding).
        student.query_embed.weight[-1] += torch.randn(64, generator=torch.Generator().manual_seed(0))
        after = student(**inputs()).logits
        # Control: under a causal mask the first query would not see the change.
        causal_before = student.decoder(inputs_embeds=queries.expand(2, -1, -1), **kwargs).last_hidden_state
        causal_after = student.decoder(inputs_embeds=student.query_embed.weight.expand(2, -1, -1), **kwargs)
        student.query_embed.weight.copy_(queries)
    assert (after[:, 0] - before[:, 0]).abs().max() > 1e-3
    assert torch.equal(causal_after.last_hidden_state[:, 0], causal_before[:, 0])


def test_forward_loss_equals_query_ctc_loss_and_trains_new_weights(pair):
    ofa, _ = pair
    torch.manual_seed(1)
    student = NARVLModel.from_ofa(ofa, num_queries=N, label_smoothing=0.1)
    targets = torch.tensor([[17, 18, 18, 2, 1], [1050, 1051, 1052, 1053, 2], [9, 2, 1, 1, 1]])
    lengths = torch.tensor([4, 5, 2])
    weights = torch.tensor([1.0, 0.6, 0.3])
    batch = {k: torch.cat([v, v[:1]]) for k, v in inputs().items()}  # B = 3
    out = student(**batch, targets=targets, weights=weights)  # lengths inferred from <pad>
    ref, n_inf = query_ctc_loss(out.logits, targets, lengths, 1100, label_smoothing=0.1, weights=weights)
    assert torch.equal(out.loss, ref) and out.n_infeasible.item() == n_inf.item() == 0
    out.loss.backward()
    assert student.query_embed.weight.grad.abs().sum() > 0 and student.blank_row.grad.abs().sum() > 0
    assert student.encoder.embed_tokens.weight.grad.abs().sum() > 0
    # Without smoothing or weights, it is the official F.ctc_loss 'mean' on the logits.
    plain = NARVLModel.from_ofa(ofa, num_queries=N)
    with torch.no_grad():
        out = plain(**batch, targets=targets, target_lengths=lengths)
        official = F.ctc_loss(out.logits.log_softmax(-1).transpose(0, 1), targets, torch.full((3,), N), lengths,
                              blank=1100, reduction="mean", zero_infinity=True)
    torch.testing.assert_close(out.loss, official, rtol=0, atol=1e-6)


def test_forward_counts_infeasible_targets(pair):
    student = NARVLModel.from_ofa(pair[0], num_queries=4)
    targets = torch.tensor([[5, 5, 5, 2], [5, 6, 2, 1]])  # 4 tokens + 2 blanks > 4 queries; 3 tokens fit
    with torch.no_grad():
        out = student(**inputs(), targets=targets)
    assert out.n_infeasible.item() == 1 and torch.isfinite(out.loss)


def test_save_pretrained_round_trips_exactly(pair, tmp_path):
    _, student = pair
    student.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not (tmp_path / "pytorch_model.bin").exists()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = transformers.logging.get_logger("transformers")
    logger.addHandler(handler)
    try:
        loaded, info = NARVLModel.from_pretrained(tmp_path, output_loading_info=True)
    finally:
        logger.removeHandler(handler)
    assert not any(r.levelno >= logging.WARNING for r in records), [r.getMessage() for r in records]
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    saved, original = loaded.config.to_dict(), student.config.to_dict()
    assert saved.pop("_name_or_path") == str(tmp_path) and original.pop("_name_or_path") == ""
    assert isinstance(loaded.config, NARVLConfig) and saved == original
    assert loaded.config.num_queries == N and loaded.config.task == "caption"
    a, b = student.state_dict(), loaded.eval().state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.decoder.output_projection.weight is loaded.encoder.embed_tokens.weight
    with torch.no_grad():
        assert torch.equal(loaded(**inputs()).logits, student(**inputs()).logits)


def test_from_ofa_accepts_a_checkpoint_folder(pair, tmp_path):
    ofa, student = pair
    ofa.save_pretrained(tmp_path / "ofa")
    from_folder = NARVLModel.from_ofa(tmp_path / "ofa", num_queries=N)
    for key, value in ofa.state_dict().items():
        assert torch.equal(from_folder.state_dict()[key], value), key


def test_decode_is_greedy_ctc_on_the_logits(pair):
    _, student = pair
    with torch.no_grad():
        logits = student(**inputs()).logits
    assert student.decode(**inputs()) == ctc_greedy_decode(logits, 1100, eos_id=2, pad_id=1)
    assert len(student.decode(**inputs(), num_beams=3)) == 2


def test_config_rejects_too_many_queries():
    with pytest.raises(ValueError, match="num_queries"):
        NARVLConfig.from_ofa_config(OFAConfig.from_pretrained(FIXTURE), num_queries=65)
