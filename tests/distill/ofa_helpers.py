"""Shared helpers of the OFA tests: the tiny reference fixture and a small random config it never shows."""
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill.ofa import OFAConfig, OFAModel

FIXTURE = Path(__file__).parents[1] / "fixtures" / "ofa-tiny-reference"
BASE_LAYOUT = Path(__file__).parents[1] / "fixtures" / "ofa-base-layout"
CASES = ("main", "nonsquare", "textonly")
TOL = 1e-4


def read_keys(path: Path) -> list[tuple[str, list[int], str, str]]:
    """keys.txt rows: (name, shape, dtype, kind); shapes are JSON lists or Python tuples."""
    rows = []
    for line in path.read_text().splitlines():
        name, shape, dtype, kind = line.split("\t")[:4]
        rows.append((name, [int(s) for s in shape.strip("[]() ").replace(" ", "").split(",") if s], dtype, kind))
    return rows


@lru_cache(maxsize=1)
def expected() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE / "expected.safetensors")


def fixture_weights() -> dict[str, torch.Tensor]:
    """The fixture's float16 weights as float32 (as the README prescribes)."""
    return {k: v.float() for k, v in load_file(FIXTURE / "model.safetensors").items()}


@lru_cache(maxsize=1)
def fixture_model() -> OFAModel:
    """OFAModel with the fixture weights (int buffers computed from the config), eval mode, float32."""
    model = OFAModel(OFAConfig.from_pretrained(FIXTURE)).eval()
    missing, unexpected = model.load_state_dict(fixture_weights(), strict=False)
    assert not unexpected
    stored_elsewhere = {"decoder.embed_tokens.weight", "decoder.output_projection.weight", "encoder.token_rp_bucket",
                        "encoder.image_rp_bucket", "decoder.token_rp_bucket", "decoder.image_rp_bucket",
                        "decoder.image_position_idx"}
    assert {k for k in missing if not k.endswith("num_batches_tracked")} == stored_elsewhere
    return model


def case_inputs(case: str) -> dict[str, torch.Tensor]:
    e = expected()
    inputs = {"input_ids": e[f"{case}.input_ids"], "decoder_input_ids": e[f"{case}.decoder_input_ids"]}
    if f"{case}.patch_images" in e:
        inputs["patch_images"] = e[f"{case}.patch_images"]
        inputs["patch_masks"] = e[f"{case}.patch_masks"].bool()
    return inputs


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item()


def other_config(**overrides) -> OFAConfig:
    """A config the fixture never shows: unequal layer counts and heads, other buckets, ResNet50."""
    values = dict(vocab_size=300, d_model=48, encoder_layers=3, decoder_layers=2, encoder_attention_heads=4,
                  decoder_attention_heads=6, encoder_ffn_dim=80, decoder_ffn_dim=96, resnet_type="resnet50",
                  token_bucket_size=10, image_bucket_size=6, max_position_embeddings=40, code_image_size=48)
    values.update(overrides)
    return OFAConfig(**values)


def randomized(model: OFAModel, seed: int = 0, by_name: bool = False) -> OFAModel:
    """Redraw every float tensor so that each code path (gains, relative tables, BN statistics) has an effect;
    `by_name`: in sorted name order (the draws then do not depend on the module order), else in state-dict order."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        items = model.state_dict(keep_vars=True).items()
        for name, tensor in (sorted(items) if by_name else items):
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif name.endswith(("bias", "running_mean")):
                tensor.copy_(0.05 * noise)
            elif tensor.dim() == 1:  # layer/batch-norm gains and per-head gains
                # Weak embedding norms (as in the fixture) keep a random decoder from copying its input token.
                tensor.copy_((1.0 + 0.1 * noise) * (0.3 if "layernorm_embedding" in name else 1.0))
            elif tensor.dim() == 2 and ("embed" in name or "rel_pos" in name):
                tensor.copy_(0.5 * noise)
            else:  # linear 1.5 / sqrt(fan_in); convolutions smaller so that 13+ residual blocks stay bounded
                tensor.copy_(noise * (0.7 if tensor.dim() == 4 else 1.5) / tensor[0].numel() ** 0.5)
    return model.eval()
