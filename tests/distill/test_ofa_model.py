"""OFAModel against the OFA-Sys reference fixture: state-dict layout and numerical fidelity (fp32, 1e-4)."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # the suite runs with --import-mode=importlib
from ofa_helpers import (BASE_LAYOUT, CASES, FIXTURE, TOL, case_inputs, expected, fixture_model, max_diff,
                         other_config, randomized, read_keys)  # noqa: E402,F401

from distill.ofa import OFAConfig, OFAModel
from distill.ofa.positions import image_bucket_position, token_bucket_position


def _layout(model: OFAModel) -> list[tuple[str, list[int], str, str]]:
    params = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    return [(name, list(t.shape), str(t.dtype).removeprefix("torch."), "param" if name in params else "buffer")
            for name, t in model.state_dict().items()]


def test_tiny_state_dict_layout_equals_reference():
    model = OFAModel(OFAConfig.from_pretrained(FIXTURE))
    assert _layout(model) == read_keys(FIXTURE / "keys.txt")  # names, order, shapes, dtypes, param/buffer


def test_base_layout_on_meta_device():
    with torch.device("meta"):
        model = OFAModel(OFAConfig.from_pretrained(BASE_LAYOUT))
    reference = {name: shape for name, shape, _, _ in read_keys(BASE_LAYOUT / "keys.txt")}
    mine = {name: shape for name, shape, _, _ in _layout(model)}
    assert len(reference) == 965
    assert mine == reference


def test_default_config_is_ofa_base():
    with torch.device("meta"):
        model = OFAModel(OFAConfig())
    reference = {name: shape for name, shape, _, _ in read_keys(BASE_LAYOUT / "keys.txt")}
    assert {name: list(t.shape) for name, t in model.state_dict().items()} == reference


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_reference(case):
    model, e = fixture_model(), expected()
    inputs = case_inputs(case)
    with torch.no_grad():
        encoder_out = model.encoder(inputs["input_ids"], patch_images=inputs.get("patch_images"),
                                    patch_masks=inputs.get("patch_masks"))
        out = model(**inputs)
    diffs = {
        "encoder_position_embedding": max_diff(encoder_out.position_embedding, e[f"{case}.encoder_position_embedding"]),
        "encoder_last_hidden_state": max_diff(out.encoder_last_hidden_state, e[f"{case}.encoder_last_hidden_state"]),
        "decoder_logits": max_diff(out.logits, e[f"{case}.decoder_logits"]),
        "decoder_logits_vs_fp64": max_diff(out.logits, e[f"{case}.decoder_logits_fp64"]),
    }
    if "patch_images" in inputs:
        with torch.no_grad():
            features = model.encoder.embed_images(inputs["patch_images"])
        diffs["resnet_features"] = max_diff(features, e[f"{case}.resnet_features"])
    print(f"\n[ofa fidelity] {case}: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert all(v <= TOL for v in diffs.values()), diffs
    assert torch.equal(encoder_out.padding_mask, e[f"{case}.encoder_padding_mask"].bool())


def test_hidden_states_of_every_layer_match_reference():
    model, e = fixture_model(), expected()
    with torch.no_grad():
        out = model(**case_inputs("main"), output_hidden_states=True)
    for mine, name in ((out.encoder_hidden_states, "encoder"), (out.decoder_hidden_states, "decoder")):
        reference = e[f"main.{name}_hidden_states"]
        assert len(mine) == reference.shape[0]
        for layer, states in enumerate(mine):
            assert max_diff(states, reference[layer]) <= TOL, (name, layer)


def test_relative_bucket_tables_against_brute_force():
    bucket = 16
    table = token_bucket_position(bucket)
    assert table.shape == (1024, 1024)
    for offset in range(-bucket // 2, bucket // 2 + 1):  # exact buckets for small offsets
        assert table[100 + offset, 100].item() == offset + bucket - 1
    far = table[1023, :1023 - bucket // 2].tolist()  # log buckets: monotone, within range, symmetric
    assert far == sorted(far, reverse=True) and max(far) == 2 * bucket - 2
    assert torch.equal(table + table.T, torch.full_like(table, 2 * (bucket - 1)))
    b = 3
    image = image_bucket_position(b)
    num = (2 * b - 1) ** 2 + 3
    for i in range(b * b):
        for j in range(b * b):
            dr, dc = i // b - j // b, i % b - j % b
            assert image[1 + i, 1 + j].item() == (dr + b - 1) * (2 * b - 1) + dc + b - 1
    assert image[0, 0].item() == num - 1 and image[0, 1].item() == num - 3 and image[1, 0].item() == num - 2


def test_decoder_query_path_for_narvl():
    """inputs_embeds take the token path; causal=False lets early positions see later ones."""
    model, e = fixture_model(), expected()
    with torch.no_grad():
        enc = model.encoder(e["main.input_ids"], patch_images=e["main.patch_images"])
        kwargs = dict(encoder_hidden_states=enc.last_hidden_state, encoder_padding_mask=enc.padding_mask,
                      encoder_position_embedding=enc.position_embedding)
        ids = e["main.decoder_input_ids"]
        by_ids = model.decoder(input_ids=ids, **kwargs).last_hidden_state
        embeds = model.get_input_embeddings()(ids)
        by_embeds = model.decoder(inputs_embeds=embeds, **kwargs).last_hidden_state
        assert by_ids.shape == (2, 8, 64) and max_diff(by_ids, by_embeds) == 0.0
        changed = embeds.clone()
        changed[:, -1] += torch.randn(changed[:, -1].shape, generator=torch.Generator().manual_seed(0))
        causal = model.decoder(inputs_embeds=changed, **kwargs).last_hidden_state
        full = model.decoder(inputs_embeds=embeds, causal=False, **kwargs).last_hidden_state
        full_changed = model.decoder(inputs_embeds=changed, causal=False, **kwargs).last_hidden_state
    assert max_diff(causal[:, :-1], by_ids[:, :-1]) == 0.0  # causal: the past ignores the future
    assert max_diff(full_changed[:, 0], full[:, 0]) > 1e-3  # bidirectional queries
    same = embeds[:, :1].expand(-1, 8, -1)  # identical queries differ only through the position biases
    with torch.no_grad():
        spread = model.decoder(inputs_embeds=same, causal=False, **kwargs).last_hidden_state
    assert min(max_diff(spread[:, i], spread[:, i + 1]) for i in range(7)) > 1e-3


def test_embeddings_are_tied_and_logits_use_them():
    model = fixture_model()
    shared = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is shared and model.decoder.embed_tokens.weight is shared
    assert model.get_output_embeddings().bias is None


def test_labels_loss_is_token_cross_entropy():
    model, e = fixture_model(), expected()
    labels = torch.tensor([[825, 141, 2, -100], [825, 2, -100, -100]])
    with torch.no_grad():
        out = model(input_ids=e["main.input_ids"], patch_images=e["main.patch_images"], labels=labels)
        decoder_input_ids = torch.tensor([[0, 825, 141, 2], [0, 825, 2, 1]])
        logits = model(input_ids=e["main.input_ids"], patch_images=e["main.patch_images"],
                       decoder_input_ids=decoder_input_ids).logits
    log_probs = logits.log_softmax(-1)
    picked = [log_probs[b, t, labels[b, t]] for b in range(2) for t in range(4) if labels[b, t] >= 0]
    assert abs(out.loss.item() + torch.stack(picked).mean().item()) < 1e-5


def test_dropout_and_drop_path_act_only_in_training():
    config = other_config(dropout=0.3, attention_dropout=0.2, activation_dropout=0.2, encoder_drop_path_rate=0.5,
                          decoder_drop_path_rate=0.5, resnet_drop_path_rate=0.5, resnet_type="resnet18")
    model = randomized(OFAModel(config))
    inputs = dict(input_ids=torch.tensor([[5, 6, 7, 2]]), patch_images=torch.randn(1, 3, 32, 32),
                  decoder_input_ids=torch.tensor([[0, 5, 6]]))
    with torch.no_grad():
        eval_a, eval_b = model(**inputs).logits, model(**inputs).logits
        model.train()
        torch.manual_seed(0)
        train_a = model(**inputs).logits
        train_b = model(**inputs).logits
    assert torch.equal(eval_a, eval_b)
    assert max_diff(train_a, train_b) > 1e-3 and max_diff(train_a, eval_a) > 1e-3
    assert model.decoder.layers[-1].drop_path.p == 0.5 and model.encoder.layers[0].drop_path.p == 0.0


def test_other_config_layout_and_shapes():
    config = other_config()
    model = randomized(OFAModel(config))
    sd = model.state_dict()
    heads_e, heads_d = config.encoder_attention_heads, config.decoder_attention_heads
    assert sd["encoder.token_rel_pos_table_list.2.weight"].shape == (2 * 10 - 1, heads_e)
    assert sd["decoder.token_rel_pos_table_list.1.weight"].shape == (2 * 10 - 1, heads_d)
    assert sd["encoder.image_rel_pos_table_list.0.weight"].shape == ((2 * 6 - 1) ** 2 + 3, heads_e)
    assert sd["encoder.embed_positions.weight"].shape == (42, 48)
    assert sd["decoder.embed_image_positions.weight"].shape == (37, 48)
    assert sd["encoder.token_rp_bucket"].shape == sd["decoder.token_rp_bucket"].shape == (1024, 1024)
    assert sd["decoder.image_position_idx"].shape == ((48 // 8) ** 2 + 1 + 768,)
    assert sd["encoder.layers.2.self_attn.c_attn"].shape == (heads_e,) and "encoder.layers.3.fc1.weight" not in sd
    assert "encoder.embed_images.layer3.5.conv3.weight" in sd and "encoder.embed_images.layer3.6.conv1.weight" not in sd
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[5, 6, 7, 2, 1]]), patch_images=torch.randn(1, 3, 64, 96),
                    decoder_input_ids=torch.tensor([[0, 5, 6]]))
    assert out.logits.shape == (1, 3, 300) and out.encoder_last_hidden_state.shape == (1, 4 * 6 + 5, 48)


def test_fresh_initialisation_follows_ofa():
    """Relative tables start at zero, head gains at one, <pad> row zero, buffers equal their config functions."""
    config = other_config()
    model = OFAModel(config)
    assert all(t.weight.abs().max() == 0 for t in [*model.encoder.token_rel_pos_table_list,
                                                   *model.decoder.image_rel_pos_table_list])
    assert torch.equal(model.decoder.layers[0].cross_attn.c_attn, torch.ones(config.decoder_attention_heads))
    assert model.get_input_embeddings().weight[config.pad_token_id].abs().max() == 0
    assert torch.equal(model.encoder.token_rp_bucket, token_bucket_position(config.token_bucket_size))
    assert torch.equal(model.decoder.image_rp_bucket, image_bucket_position(config.image_bucket_size))
    vocab = config.vocab_size
    model.resize_token_embeddings(vocab + 1)  # NARVL appends a blank row: the tie must follow
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight.shape == (vocab + 1, config.d_model)
