"""The OFA shapes the benchmarks build with random weights: OFA-tiny and OFA-base as `student.presets.OFA_ARCHS`
describes them (DESIGN.md section 3; FFN 4 x d_model; the model cards' 256 / 384 px), and the test suite's `test`."""
from __future__ import annotations

SHAPES = ("tiny", "base", "test")
TEST = dict(encoder_layers=1, decoder_layers=1, d_model=32, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=64, decoder_ffn_dim=64, resnet_type="resnet18")
"""A one-layer OFA at 32 px: what the test suite runs the benchmarks at."""


def ofa_shape(size: str) -> tuple[dict, int]:
    """(`OFAConfig` keyword arguments, image side in pixels) of `size` (one of `SHAPES`)."""
    if size == "test":
        return dict(TEST), 32
    from student.presets import OFA_ARCHS

    a = OFA_ARCHS[size]
    d = a["d_model"]
    return dict(encoder_layers=a["encoder_layers"], decoder_layers=a["decoder_layers"], d_model=d,
                encoder_attention_heads=a["heads"], decoder_attention_heads=a["heads"], encoder_ffn_dim=4 * d,
                decoder_ffn_dim=4 * d, resnet_type=a["resnet_type"]), a["resolution"]
