"""Loading OFA checkpoints: the OFA-Sys `pytorch_model.bin` layout, save_pretrained round trips, Auto classes."""
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))  # the suite runs with --import-mode=importlib
from ofa_helpers import (FIXTURE, TOL, case_inputs, expected, fixture_weights, max_diff,  # noqa: E402,F401
                         read_keys)

from distill.ofa import OFAConfig, OFAModel  # noqa: E402
from distill.ofa.positions import code_position_ids, image_bucket_position, token_bucket_position  # noqa: E402


def _ofa_sys_state_dict() -> dict[str, torch.Tensor]:
    """The fixture weights in the layout of an OFA-Sys `pytorch_model.bin`: every keys.txt entry, the tied embedding
    stored three times (separate tensors), int64 bucket tables and BN counters."""
    config = OFAConfig.from_pretrained(FIXTURE)
    weights = fixture_weights()
    shared = weights["encoder.embed_tokens.weight"]
    computed = {
        "token_rp_bucket": token_bucket_position(config.token_bucket_size),
        "image_rp_bucket": image_bucket_position(config.image_bucket_size),
    }
    state = {}
    for name, shape, dtype, _ in read_keys(FIXTURE / "keys.txt"):
        if name in weights:
            state[name] = weights[name].clone()
        elif name in ("decoder.embed_tokens.weight", "decoder.output_projection.weight"):
            state[name] = shared.clone()
        elif name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(7)
        elif name == "decoder.image_position_idx":
            state[name] = code_position_ids(config.code_image_size, config.image_bucket_size)
        else:
            state[name] = computed[name.split(".")[-1]].clone()
        assert list(state[name].shape) == shape and str(state[name].dtype) == f"torch.{dtype}", name
    return state


def _assert_fixture_logits(model: OFAModel):
    with torch.no_grad():
        logits = model(**case_inputs("main")).logits
    assert max_diff(logits, expected()["main.decoder_logits"]) <= TOL


def _no_problems(info: dict):
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert not info["error_msgs"]


def test_ofa_sys_pytorch_model_bin_loads_exactly(tmp_path):
    state = _ofa_sys_state_dict()
    shutil.copy(FIXTURE / "config.json", tmp_path)
    torch.save(state, tmp_path / "pytorch_model.bin")
    model, info = OFAModel.from_pretrained(tmp_path, output_loading_info=True)
    _no_problems(info)
    assert not model.training
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name
    shared = model.get_input_embeddings().weight
    assert model.decoder.embed_tokens.weight is shared and model.get_output_embeddings().weight is shared
    _assert_fixture_logits(model)
    assert model.generation_config.forced_eos_token_id == 2 and model.generation_config.use_cache


def test_save_pretrained_round_trip_is_exact(tmp_path):
    shutil.copy(FIXTURE / "config.json", tmp_path)
    torch.save(_ofa_sys_state_dict(), tmp_path / "pytorch_model.bin")
    model = OFAModel.from_pretrained(tmp_path)
    out = tmp_path / "saved"
    model.save_pretrained(out)
    assert (out / "model.safetensors").exists() and not (out / "pytorch_model.bin").exists()
    stored = load_file(out / "model.safetensors")
    assert "decoder.output_projection.weight" not in stored  # tied copies are not written twice
    again, info = OFAModel.from_pretrained(out, output_loading_info=True)
    _no_problems(info)
    original, reloaded = model.state_dict(), again.state_dict()
    assert original.keys() == reloaded.keys()
    for name in original:
        assert torch.equal(original[name], reloaded[name]), name
    assert again.get_output_embeddings().weight is again.get_input_embeddings().weight
    assert again.generation_config.forced_eos_token_id == 2 and again.generation_config.use_cache


def test_auto_classes_and_buffers_recomputed_when_absent(tmp_path):
    """The fixture's own folder stores no int buffers: they are recomputed from the config."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    for name in ("config.json", "model.safetensors"):
        shutil.copy(FIXTURE / name, tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), OFAConfig)
    model, info = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, dtype=torch.float32, output_loading_info=True)
    assert isinstance(model, OFAModel)
    assert {k for k in info["missing_keys"] if not k.endswith("num_batches_tracked")} == {
        "encoder.token_rp_bucket", "encoder.image_rp_bucket", "decoder.token_rp_bucket", "decoder.image_rp_bucket",
        "decoder.image_position_idx"}
    reference = _ofa_sys_state_dict()
    for name in info["missing_keys"] - {k for k in info["missing_keys"] if k.endswith("num_batches_tracked")}:
        assert torch.equal(model.state_dict()[name], reference[name]), name
    _assert_fixture_logits(model)
